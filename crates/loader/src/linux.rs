//! Linux kernels (ELF `vmlinux` or bzImage) and their initrd.
//!
//! The image is read whole (it can be no larger than guest RAM), its headers are checked here
//! field by field, and only then is it handed to linux-loader's [`Elf`] or [`BzImage`] loader
//! to be copied into guest memory. The checks make sure that the kernel lies wholly in RAM
//! below the MMIO gap: a bzImage (and the memory it decompresses into) from [`HIMEM_START`],
//! an ELF kernel's segments wherever they do not overlap Petrel's boot structures
//! ([`crate::reserved`]), which the boot configuration writes after the kernel is loaded.
//!
//! bzImage offsets and fields are those of `Documentation/arch/x86/boot.rst` ("The real-mode
//! kernel header"); ELF ones are from the System V ABI (`/usr/include/elf.h`).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use petrel_guest_mem::layout::{ram_ranges, HIMEM_START, RAM_START};
use petrel_guest_mem::vm_memory::GuestAddress;
use petrel_guest_mem::GuestRam;

use crate::raw::read_image_file;
use crate::reserved;
use crate::{Error, Result};

/// Guest page size: the initrd is page aligned (boot.rst, "ramdisk_image").
pub const PAGE_SIZE: u64 = 0x1000;

/// Highest initrd address for an ELF kernel, which carries no setup header: the value x86
/// kernels have put in `initrd_addr_max` since 2.6.x (`arch/x86/boot/header.S`).
pub const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// Command-line room for an ELF kernel, NUL included: x86's `COMMAND_LINE_SIZE`
/// (`arch/x86/include/asm/setup.h`).
pub const ELF_CMDLINE_MAX: usize = 2048;

/// Oldest bzImage boot protocol accepted: 2.12 introduced `xloadflags` and with it the 64-bit
/// entry point (boot.rst, "Protocol 2.12"). Older kernels can only be started in 32-bit mode.
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address
/// (boot.rst, "64-bit Boot Protocol").
pub const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;

/// `"HdrS"`, the setup header magic at offset 0x202 (boot.rst, "header").
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// The boot sector signature at offset 0x1fe (boot.rst, "boot_flag").
const BZIMAGE_BOOT_FLAG: u16 = 0xaa55;
/// Offsets of setup header fields in the image (boot.rst, "The real-mode kernel header").
const OFF_SETUP_SECTS: usize = 0x1f1;
const OFF_SYSSIZE: usize = 0x1f4;
const OFF_BOOT_FLAG: usize = 0x1fe;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_INITRD_ADDR_MAX: usize = 0x22c;
const OFF_KERNEL_ALIGNMENT: usize = 0x230;
const OFF_RELOCATABLE_KERNEL: usize = 0x234;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
const OFF_PREF_ADDRESS: usize = 0x258;
const OFF_INIT_SIZE: usize = 0x260;
/// End of the 2.12+ setup header as linux-loader reads it (0x1f1 + sizeof(setup_header)).
const SETUP_HEADER_END: usize = 0x26c;
/// Size of a setup sector; `setup_sects == 0` means 4 (boot.rst, "setup_sects").
const SECTOR_SIZE: u64 = 512;
const DEFAULT_SETUP_SECTS: u64 = 4;

/// ELF identification and header layout (System V ABI, `Elf64_Ehdr` and `Elf64_Phdr`).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const ELFCLASS64: u8 = 2;
const EI_DATA: usize = 5;
const ELFDATA2LSB: u8 = 1;
const OFF_E_TYPE: usize = 0x10;
const ET_EXEC: u16 = 2;
const OFF_E_MACHINE: usize = 0x12;
const EM_X86_64: u16 = 62;
const OFF_E_ENTRY: usize = 0x18;
const OFF_E_PHOFF: usize = 0x20;
const OFF_E_PHENTSIZE: usize = 0x36;
const OFF_E_PHNUM: usize = 0x38;
const ELF64_EHDR_SIZE: usize = 64;
const ELF64_PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;

/// The format of a loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A bzImage (setup code plus compressed kernel).
    BzImage,
}

/// A kernel that has been copied into guest memory, and what booting it needs.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The file it came from (for error messages).
    pub path: PathBuf,
    /// Its format.
    pub kind: KernelKind,
    /// Guest-physical address of its first loaded byte.
    pub kernel_start: u64,
    /// Guest-physical 64-bit entry point (ELF `e_entry`, or the bzImage's load address + 0x200).
    pub entry_64: u64,
    /// The PVH 32-bit entry point, if the ELF kernel has a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
    /// One past the last byte the kernel occupies or, for a bzImage, decompresses into.
    pub kernel_end: u64,
    /// The bzImage's setup header (with `code32_start` set to the load address).
    pub setup_header: Option<setup_header>,
    /// Highest address the initrd's last byte may occupy.
    pub initrd_addr_max: u64,
    /// Room the kernel has for its command line, terminating NUL included.
    pub cmdline_max: usize,
}

/// An initrd copied into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    /// Guest-physical address (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// End of the RAM below the MMIO gap, where kernels, initrds and boot structures must live.
pub(crate) fn low_ram_end(ram: &GuestRam) -> u64 {
    ram_ranges(ram.size())
        .first()
        .map_or(0, |(start, len)| start + len)
}

/// Reads the kernel at `path` and loads it with [`load_kernel_image`].
pub fn load_kernel(ram: &GuestRam, path: &Path) -> Result<LoadedKernel> {
    let image = read_image_file(ram, "kernel", path)?;
    load_kernel_image(ram, &image, path)
}

/// Checks and loads a kernel image held in memory; `path` only names it in errors.
///
/// ELF images (by their magic) are loaded at their segments' physical addresses; bzImages
/// (`"HdrS"` at 0x202) have their protected-mode part loaded at [`HIMEM_START`].
pub fn load_kernel_image(ram: &GuestRam, image: &[u8], path: &Path) -> Result<LoadedKernel> {
    if image.starts_with(ELF_MAGIC) {
        load_elf(ram, image, path)
    } else if image.get(OFF_HEADER..OFF_HEADER + 4) == Some(BZIMAGE_MAGIC.as_slice()) {
        load_bzimage(ram, image, path)
    } else {
        Err(Error::NotLinuxKernel {
            path: path.to_path_buf(),
        })
    }
}

fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from(le_u32(b, off)) | u64::from(le_u32(b, off + 4)) << 32
}

/// The fields of a bzImage setup header this crate acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageInfo {
    /// Boot protocol version (major in the high byte).
    pub version: u16,
    /// Bytes of real-mode setup code before the protected-mode kernel.
    pub setup_size: u64,
    /// Bytes of protected-mode kernel (`syssize` × 16).
    pub kernel_size: u64,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u64,
    /// Command-line room, NUL included (`cmdline_size` + 1).
    pub cmdline_max: usize,
    /// Alignment a relocatable kernel runs at.
    pub kernel_alignment: u64,
    /// Whether the kernel can run at any suitably aligned address.
    pub relocatable: bool,
    /// Where the kernel prefers to run (its `LOAD_PHYSICAL_ADDR`).
    pub pref_address: u64,
    /// Bytes the kernel needs from where it runs, for decompression and its own image.
    pub init_size: u64,
}

/// Parses and checks a bzImage's setup header: the magic, the boot flag, protocol 2.12 or
/// later, `LOADED_HIGH`, `XLF_KERNEL_64`, and an image long enough for the setup sectors and
/// `syssize`. `path` only names the image in errors.
pub fn parse_bzimage_header(image: &[u8], path: &Path) -> Result<BzImageInfo> {
    let path_buf = || path.to_path_buf();
    let size = image.len() as u64;
    if image.len() < SETUP_HEADER_END {
        return Err(Error::KernelTruncated {
            path: path_buf(),
            what: "setup header",
            size,
            needed: SETUP_HEADER_END as u64,
        });
    }
    if &image[OFF_HEADER..OFF_HEADER + 4] != BZIMAGE_MAGIC {
        return Err(Error::NotLinuxKernel { path: path_buf() });
    }
    let boot_flag = le_u16(image, OFF_BOOT_FLAG);
    if boot_flag != BZIMAGE_BOOT_FLAG {
        return Err(Error::InvalidKernelHeader {
            path: path_buf(),
            field: "boot_flag",
            value: boot_flag.into(),
        });
    }
    let version = le_u16(image, OFF_VERSION);
    if version < MIN_BOOT_PROTOCOL {
        return Err(Error::BootProtocolTooOld {
            path: path_buf(),
            version,
            min: MIN_BOOT_PROTOCOL,
        });
    }
    if image[OFF_LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(Error::KernelNotLoadedHigh { path: path_buf() });
    }
    let xloadflags = le_u16(image, OFF_XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::KernelNot64Bit {
            path: path_buf(),
            xloadflags,
        });
    }
    let setup_sects = match image[OFF_SETUP_SECTS] {
        0 => DEFAULT_SETUP_SECTS,
        n => u64::from(n),
    };
    // The boot sector plus the setup sectors.
    let setup_size = (setup_sects + 1) * SECTOR_SIZE;
    let kernel_size = u64::from(le_u32(image, OFF_SYSSIZE)) * 16;
    if kernel_size == 0 {
        return Err(Error::InvalidKernelHeader {
            path: path_buf(),
            field: "syssize",
            value: 0,
        });
    }
    let needed = setup_size + kernel_size;
    if size < needed {
        return Err(Error::KernelTruncated {
            path: path_buf(),
            what: "setup sectors and syssize",
            size,
            needed,
        });
    }
    Ok(BzImageInfo {
        version,
        setup_size,
        kernel_size,
        initrd_addr_max: le_u32(image, OFF_INITRD_ADDR_MAX).into(),
        // cmdline_size excludes the NUL (boot.rst, "cmdline_size"); u32 -> usize is lossless
        // on the 64-bit hosts this crate targets.
        cmdline_max: le_u32(image, OFF_CMDLINE_SIZE) as usize + 1,
        kernel_alignment: le_u32(image, OFF_KERNEL_ALIGNMENT).into(),
        relocatable: image[OFF_RELOCATABLE_KERNEL] != 0,
        pref_address: le_u64(image, OFF_PREF_ADDRESS),
        init_size: le_u32(image, OFF_INIT_SIZE).into(),
    })
}

/// Where a bzImage whose protected-mode part of `loaded` bytes is loaded at `load` ends up
/// needing memory until: the larger of the loaded bytes and the `init_size` bytes from where
/// the decompressor runs it. That is `pref_address` (`LOAD_PHYSICAL_ADDR`) or, for a
/// relocatable kernel, the load address rounded up to `kernel_alignment` when that is higher
/// (`arch/x86/boot/compressed/head_64.S`).
fn bzimage_end(info: &BzImageInfo, load: u64, loaded: u64) -> Option<u64> {
    let mut run_at = info.pref_address.max(load);
    if info.relocatable {
        let align = info.kernel_alignment.max(1);
        run_at = run_at.max(load.checked_add(align - 1)? / align * align);
    }
    // linux-loader copies everything after the setup sectors, which may be more than syssize
    // announces (trailing data): count what is actually copied.
    let image_end = load.checked_add(info.kernel_size.max(loaded))?;
    Some(image_end.max(run_at.checked_add(info.init_size)?))
}

fn load_bzimage(ram: &GuestRam, image: &[u8], path: &Path) -> Result<LoadedKernel> {
    let info = parse_bzimage_header(image, path)?;
    let load = HIMEM_START;
    let highest = low_ram_end(ram);
    // parse_bzimage_header checked that the image holds the setup sectors.
    let loaded = image.len() as u64 - info.setup_size;
    let end = bzimage_end(&info, load, loaded).unwrap_or(u64::MAX);
    if end > highest {
        return Err(Error::KernelPlacement {
            path: path.to_path_buf(),
            start: load,
            end,
            lowest: HIMEM_START,
            highest,
        });
    }
    let result = BzImage::load(
        ram.memory(),
        Some(GuestAddress(load)),
        &mut Cursor::new(image),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| Error::LoadKernel {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(LoadedKernel {
        path: path.to_path_buf(),
        kind: KernelKind::BzImage,
        kernel_start: load,
        entry_64: load + BZIMAGE_ENTRY_64_OFFSET,
        pvh_entry: None,
        kernel_end: end.max(result.kernel_end),
        setup_header: result.setup_header,
        initrd_addr_max: info.initrd_addr_max,
        cmdline_max: info.cmdline_max,
    })
}

/// A PT_LOAD segment: its program header index, file range and guest-physical range.
struct LoadSegment {
    index: u64,
    offset: u64,
    filesz: u64,
    paddr: u64,
    memsz: u64,
}

fn load_elf(ram: &GuestRam, image: &[u8], path: &Path) -> Result<LoadedKernel> {
    let path_buf = || path.to_path_buf();
    let size = image.len() as u64;
    let invalid = |field, value: u64| Error::InvalidKernelHeader {
        path: path_buf(),
        field,
        value,
    };
    if image.len() < ELF64_EHDR_SIZE {
        return Err(Error::KernelTruncated {
            path: path_buf(),
            what: "ELF header",
            size,
            needed: ELF64_EHDR_SIZE as u64,
        });
    }
    if image[EI_CLASS] != ELFCLASS64 {
        return Err(invalid("ELF class (64-bit needed)", image[EI_CLASS].into()));
    }
    if image[EI_DATA] != ELFDATA2LSB {
        return Err(invalid(
            "ELF data encoding (little-endian needed)",
            image[EI_DATA].into(),
        ));
    }
    let machine = le_u16(image, OFF_E_MACHINE);
    if machine != EM_X86_64 {
        return Err(invalid("ELF machine (x86_64 needed)", machine.into()));
    }
    let elf_type = le_u16(image, OFF_E_TYPE);
    if elf_type != ET_EXEC {
        return Err(invalid(
            "ELF type (an executable is needed)",
            elf_type.into(),
        ));
    }
    let phentsize = le_u16(image, OFF_E_PHENTSIZE);
    if usize::from(phentsize) != ELF64_PHDR_SIZE {
        return Err(invalid("e_phentsize", phentsize.into()));
    }
    let entry = le_u64(image, OFF_E_ENTRY);
    let phoff = le_u64(image, OFF_E_PHOFF);
    let phnum = u64::from(le_u16(image, OFF_E_PHNUM));
    let ph_end = phoff.saturating_add(phnum * ELF64_PHDR_SIZE as u64);
    if ph_end > size {
        return Err(Error::KernelTruncated {
            path: path_buf(),
            what: "program headers",
            size,
            needed: ph_end,
        });
    }

    let mut segments = Vec::new();
    for i in 0..phnum {
        // ph_end <= size, so these offsets are in bounds and fit in usize.
        let ph = (phoff + i * ELF64_PHDR_SIZE as u64) as usize;
        if le_u32(image, ph) != PT_LOAD {
            continue;
        }
        let seg = LoadSegment {
            index: i,
            offset: le_u64(image, ph + 8),
            paddr: le_u64(image, ph + 24),
            filesz: le_u64(image, ph + 32),
            memsz: le_u64(image, ph + 40),
        };
        if seg.filesz > seg.memsz {
            return Err(invalid("p_filesz (larger than p_memsz)", seg.filesz));
        }
        let file_end = seg.offset.saturating_add(seg.filesz);
        if file_end > size {
            return Err(Error::KernelTruncated {
                path: path_buf(),
                what: "loadable segment",
                size,
                needed: file_end,
            });
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(invalid("number of loadable segments", 0));
    }

    let highest = low_ram_end(ram);
    let mut kernel_start = u64::MAX;
    let mut kernel_end = 0;
    for seg in &segments {
        let end = seg.paddr.saturating_add(seg.memsz);
        if end > highest {
            return Err(Error::KernelPlacement {
                path: path_buf(),
                start: seg.paddr,
                end,
                lowest: RAM_START,
                highest,
            });
        }
        // Below 1 MiB lie the boot structures; a segment may use the memory between them.
        if let Some(b) = reserved::collision(seg.paddr, end, ELF_CMDLINE_MAX as u64) {
            return Err(Error::SegmentOverlapsBootStructure {
                path: path_buf(),
                index: seg.index,
                start: seg.paddr,
                end,
                structure: b.name,
                structure_start: b.start,
                structure_end: b.end,
            });
        }
        kernel_start = kernel_start.min(seg.paddr);
        kernel_end = kernel_end.max(end);
    }
    let in_a_segment = |addr: u64| {
        segments
            .iter()
            .any(|s| addr >= s.paddr && addr - s.paddr < s.memsz)
    };
    if !in_a_segment(entry) {
        return Err(invalid("e_entry (outside every loadable segment)", entry));
    }

    let result = Elf::load(
        ram.memory(),
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| Error::LoadKernel {
        path: path_buf(),
        source,
    })?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    if let Some(pvh) = pvh_entry.filter(|&e| !in_a_segment(e)) {
        return Err(invalid(
            "PVH entry note (outside every loadable segment)",
            pvh,
        ));
    }
    Ok(LoadedKernel {
        path: path_buf(),
        kind: KernelKind::Elf,
        kernel_start,
        entry_64: entry,
        pvh_entry,
        kernel_end: kernel_end.max(result.kernel_end),
        setup_header: None,
        initrd_addr_max: ELF_INITRD_ADDR_MAX,
        cmdline_max: ELF_CMDLINE_MAX,
    })
}

/// Where an initrd of `size` bytes goes for `kernel` in a guest of `ram_size` bytes: the
/// highest page-aligned address such that it ends at or below both `initrd_addr_max` and the
/// end of RAM below the MMIO gap, and starts at or above the kernel's end.
pub fn place_initrd(ram_size: u64, kernel: &LoadedKernel, size: u64) -> Result<u64> {
    let low_end = ram_ranges(ram_size)
        .first()
        .map_or(0, |(start, len)| start + len);
    let highest = low_end.min(kernel.initrd_addr_max.saturating_add(1));
    let lowest = kernel
        .kernel_end
        .div_ceil(PAGE_SIZE)
        .saturating_mul(PAGE_SIZE);
    let does_not_fit = Error::InitrdDoesNotFit {
        size,
        lowest,
        highest,
    };
    if size == 0 {
        return Err(does_not_fit);
    }
    let addr = highest.checked_sub(size).ok_or(does_not_fit)? & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(Error::InitrdDoesNotFit {
            size,
            lowest,
            highest,
        });
    }
    Ok(addr)
}

/// Reads the initrd at `path` and copies it as high as [`place_initrd`] allows.
pub fn load_initrd(ram: &GuestRam, path: &Path, kernel: &LoadedKernel) -> Result<Initrd> {
    let image = read_image_file(ram, "initrd", path)?;
    let size = image.len() as u64;
    let addr = place_initrd(ram.size(), kernel, size)?;
    ram.write(addr, &image)
        .map_err(|source| Error::WriteGuestMemory {
            what: "initrd",
            addr,
            source,
        })?;
    Ok(Initrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_images::*;

    const MIB: u64 = 1 << 20;

    fn ram(size: u64) -> GuestRam {
        GuestRam::new(size).unwrap()
    }

    fn path() -> &'static Path {
        Path::new("/kernels/test")
    }

    fn put(image: &mut [u8], off: usize, bytes: &[u8]) {
        image[off..off + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn bzimage_is_loaded_at_1_mib_with_its_header() {
        let ram = ram(32 * MIB);
        let k = load_kernel_image(&ram, &bzimage(), path()).unwrap();
        assert_eq!(k.kind, KernelKind::BzImage);
        assert_eq!(k.kernel_start, HIMEM_START);
        assert_eq!(k.entry_64, HIMEM_START + 0x200);
        assert_eq!(k.pvh_entry, None);
        // The decompressor runs at pref_address and needs init_size from there.
        assert_eq!(k.kernel_end, BZ_PREF_ADDRESS + BZ_INIT_SIZE);
        assert_eq!(k.initrd_addr_max, u64::from(BZ_INITRD_ADDR_MAX));
        assert_eq!(k.cmdline_max, BZ_CMDLINE_SIZE as usize + 1);
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        assert_eq!(ram.read_obj::<u8>(HIMEM_START).unwrap(), 0xb0);
        let last = HIMEM_START + BZ_KERNEL_SIZE as u64 - 1;
        assert_eq!(ram.read_obj::<u8>(last).unwrap(), 0xe0);
    }

    #[test]
    fn bzimage_header_fields_are_parsed() {
        let info = parse_bzimage_header(&bzimage(), path()).unwrap();
        assert_eq!(info.version, 0x020f);
        assert_eq!(info.setup_size, BZ_SETUP_SIZE as u64);
        assert_eq!(info.kernel_size, BZ_KERNEL_SIZE as u64);
        assert_eq!(info.kernel_alignment, 0x20_0000);
        assert!(info.relocatable);
        assert_eq!(info.pref_address, BZ_PREF_ADDRESS);
        assert_eq!(info.init_size, BZ_INIT_SIZE);

        // setup_sects == 0 means 4 sectors.
        let mut image = bzimage();
        image[0x1f1] = 0;
        image.splice(BZ_SETUP_SIZE..BZ_SETUP_SIZE, vec![0u8; 3 * 512]);
        let info = parse_bzimage_header(&image, path()).unwrap();
        assert_eq!(info.setup_size, 5 * 512);
    }

    #[test]
    fn wrong_magic_is_not_a_kernel() {
        let mut image = bzimage();
        put(&mut image, 0x202, b"HdrX");
        let err = load_kernel_image(&ram(32 * MIB), &image, path()).unwrap_err();
        assert!(matches!(err, Error::NotLinuxKernel { .. }));
        assert_eq!(
            err.to_string(),
            "/kernels/test is not a Linux kernel (neither ELF nor bzImage)"
        );
        assert!(matches!(
            parse_bzimage_header(&image, path()),
            Err(Error::NotLinuxKernel { .. })
        ));
        let err = load_kernel_image(&ram(MIB), b"MZ", path()).unwrap_err();
        assert!(matches!(err, Error::NotLinuxKernel { .. }));
    }

    #[test]
    fn bad_boot_flag_is_refused() {
        let mut image = bzimage();
        put(&mut image, 0x1fe, &0x1234u16.to_le_bytes());
        let err = parse_bzimage_header(&image, path()).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidKernelHeader {
                field: "boot_flag",
                value: 0x1234,
                ..
            }
        ));
    }

    #[test]
    fn old_boot_protocol_is_refused() {
        let mut image = bzimage();
        put(&mut image, 0x206, &0x0206u16.to_le_bytes());
        let err = load_kernel_image(&ram(32 * MIB), &image, path()).unwrap_err();
        assert!(matches!(
            err,
            Error::BootProtocolTooOld {
                version: 0x0206,
                min: 0x020c,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("2.06") && msg.contains("2.12"), "{msg}");
    }

    #[test]
    fn kernel_without_64_bit_entry_is_refused() {
        let mut image = bzimage();
        put(&mut image, 0x236, &0x0002u16.to_le_bytes());
        let err = load_kernel_image(&ram(32 * MIB), &image, path()).unwrap_err();
        assert!(matches!(err, Error::KernelNot64Bit { xloadflags: 2, .. }));
    }

    #[test]
    fn zimage_is_refused() {
        let mut image = bzimage();
        image[0x211] = 0;
        let err = load_kernel_image(&ram(32 * MIB), &image, path()).unwrap_err();
        assert!(matches!(err, Error::KernelNotLoadedHigh { .. }));
    }

    #[test]
    fn truncated_bzimages_are_refused() {
        let ram = ram(32 * MIB);
        let image = bzimage();
        // Cut inside the protected-mode part that syssize announces.
        let err = load_kernel_image(&ram, &image[..image.len() - 16], path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelTruncated {
                what: "setup sectors and syssize",
                needed: 0x1400,
                ..
            }
        ));
        // Cut inside the setup header, after the magic.
        let err = load_kernel_image(&ram, &image[..0x240], path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelTruncated {
                what: "setup header",
                size: 0x240,
                ..
            }
        ));
        // Nothing written.
        assert_eq!(ram.read_obj::<u8>(HIMEM_START).unwrap(), 0);
    }

    #[test]
    fn bzimage_that_does_not_fit_in_ram_is_refused() {
        // 16 MiB: the kernel would decompress at 16 MiB.
        let err = load_kernel_image(&ram(16 * MIB), &bzimage(), path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelPlacement { end, highest, .. }
                if end == BZ_PREF_ADDRESS + BZ_INIT_SIZE && highest == 16 * MIB
        ));
        // Trailing data past syssize is copied too, so it counts.
        let mut image = bzimage();
        image.resize(image.len() + 20 * MIB as usize, 0);
        let err = load_kernel_image(&ram(20 * MIB), &image, path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelPlacement { end, .. } if end == HIMEM_START + 20 * MIB + BZ_KERNEL_SIZE as u64
        ));
        // A pref_address near the top of the address space must not overflow.
        let mut image = bzimage();
        put(&mut image, 0x258, &(u64::MAX - 0x100).to_le_bytes());
        let err = load_kernel_image(&ram(32 * MIB), &image, path()).unwrap_err();
        assert!(matches!(err, Error::KernelPlacement { end: u64::MAX, .. }));
    }

    #[test]
    fn elf_segments_are_loaded_at_their_physical_addresses() {
        let ram = ram(8 * MIB);
        let k = load_kernel_image(&ram, &elf(None), path()).unwrap();
        assert_eq!(k.kind, KernelKind::Elf);
        assert_eq!(k.kernel_start, ELF_PADDR);
        assert_eq!(k.entry_64, ELF_ENTRY);
        assert_eq!(k.kernel_end, ELF_PADDR + ELF_MEMSZ);
        assert_eq!(k.pvh_entry, None);
        assert!(k.setup_header.is_none());
        assert_eq!(k.initrd_addr_max, ELF_INITRD_ADDR_MAX);
        assert_eq!(k.cmdline_max, ELF_CMDLINE_MAX);
        assert_eq!(ram.read_obj::<u8>(ELF_PADDR).unwrap(), 0x90);
        assert_eq!(
            ram.read_obj::<u8>(ELF_PADDR + ELF_FILESZ - 1).unwrap(),
            0xf4
        );
    }

    #[test]
    fn elf_pvh_note_is_reported() {
        let ram = ram(8 * MIB);
        let entry = (ELF_PADDR + 0x40) as u32;
        let k = load_kernel_image(&ram, &elf(Some(entry)), path()).unwrap();
        assert_eq!(k.pvh_entry, Some(u64::from(entry)));

        let err = load_kernel_image(&ram, &elf(Some(0x1000)), path()).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidKernelHeader { value: 0x1000, .. }
        ));
    }

    #[test]
    fn malformed_elf_headers_are_refused() {
        let ram = ram(8 * MIB);
        let cases: [(usize, &[u8], &str); 5] = [
            (4, &[1], "ELF class"),
            (5, &[2], "ELF data encoding"),
            (0x12, &[3, 0], "ELF machine"),
            (0x36, &[32, 0], "e_phentsize"),
            (0x10, &[1, 0], "ELF type"),
        ];
        for (off, bytes, field) in cases {
            let mut image = elf(None);
            put(&mut image, off, bytes);
            let err = load_kernel_image(&ram, &image, path()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidKernelHeader { field: f, .. } if f.starts_with(field)),
                "{field}: {err}"
            );
        }
        // Entry outside the segment.
        let mut image = elf(None);
        put(&mut image, 0x18, &0x10_0000u64.to_le_bytes());
        assert!(matches!(
            load_kernel_image(&ram, &image, path()),
            Err(Error::InvalidKernelHeader {
                value: 0x10_0000,
                ..
            })
        ));
        // No loadable segment at all.
        let mut image = elf(None);
        put(&mut image, 64, &6u32.to_le_bytes());
        assert!(matches!(
            load_kernel_image(&ram, &image, path()),
            Err(Error::InvalidKernelHeader { value: 0, .. })
        ));
    }

    #[test]
    fn truncated_elf_is_refused() {
        let ram = ram(8 * MIB);
        let image = elf(None);
        let err = load_kernel_image(&ram, &image[..40], path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelTruncated {
                what: "ELF header",
                needed: 64,
                ..
            }
        ));
        let err = load_kernel_image(&ram, &image[..100], path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelTruncated {
                what: "program headers",
                ..
            }
        ));
        let err = load_kernel_image(&ram, &image[..image.len() - 1], path()).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelTruncated {
                what: "loadable segment",
                ..
            }
        ));
    }

    /// What a plain `ld -Ttext=0x100000` makes: the ELF headers in a read-only segment at
    /// 0xff000, the code at 1 MiB.
    fn ld_style_elf(low_paddr: u64, low_len: usize) -> Vec<u8> {
        let headers = vec![0x7f; low_len];
        let code = [0x90, 0x90, 0xf4];
        elf_with_segments(
            HIMEM_START,
            &[
                TestSegment {
                    paddr: low_paddr,
                    bytes: &headers,
                    memsz: low_len as u64,
                },
                TestSegment {
                    paddr: HIMEM_START,
                    bytes: &code,
                    memsz: 0x1000,
                },
            ],
        )
    }

    #[test]
    fn elf_segment_below_1_mib_clear_of_the_boot_structures_is_loaded() {
        let ram = ram(8 * MIB);
        let k = load_kernel_image(&ram, &ld_style_elf(0xff000, 0x158), path()).unwrap();
        assert_eq!(k.kernel_start, 0xff000);
        assert_eq!(k.kernel_end, HIMEM_START + 0x1000);
        assert_eq!(k.entry_64, HIMEM_START);
        assert_eq!(ram.read_obj::<u8>(0xff000).unwrap(), 0x7f);
        assert_eq!(ram.read_obj::<u8>(0xff157).unwrap(), 0x7f);
        assert_eq!(ram.read_obj::<u8>(HIMEM_START + 2).unwrap(), 0xf4);
        // Between the page tables and the command line there is room too.
        let k = load_kernel_image(&ram, &ld_style_elf(0x10000, 0x100), path()).unwrap();
        assert_eq!(k.kernel_start, 0x10000);
    }

    #[test]
    fn elf_segment_over_a_boot_structure_is_named() {
        let ram = ram(8 * MIB);
        let err = load_kernel_image(&ram, &ld_style_elf(0x9f000, 0xc01), path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SegmentOverlapsBootStructure {
                    index: 0,
                    start: 0x9f000,
                    end: 0x9fc01,
                    structure: "MP table (EBDA)",
                    structure_start: 0x9fc00,
                    structure_end: 0xa0000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "kernel /kernels/test: loadable segment 0 needs guest memory [0x9f000, 0x9fc01), \
             which overlaps Petrel's MP table (EBDA) at [0x9fc00, 0xa0000)"
        );
        // The command line's room is what an ELF kernel may use: 2 KiB from CMDLINE_START.
        let err = load_kernel_image(&ram, &ld_style_elf(0x20000 + 0x7ff, 1), path()).unwrap_err();
        assert!(matches!(
            err,
            Error::SegmentOverlapsBootStructure {
                structure: "kernel command line",
                ..
            }
        ));
        load_kernel_image(&ram, &ld_style_elf(0x20000 + 0x800, 1), path()).unwrap();
        // Nothing was copied for the refused kernels: the command line area is still clear.
        assert_eq!(ram.read_obj::<u8>(0x9f000).unwrap(), 0);
        assert_eq!(ram.read_obj::<u8>(0x207ff).unwrap(), 0);
    }

    #[test]
    fn elf_segments_outside_usable_ram_are_refused() {
        // Below 1 MiB, over the boot stack and page tables.
        let mut image = elf(None);
        put(&mut image, 64 + 24, &0x8000u64.to_le_bytes());
        put(&mut image, 0x18, &0x8010u64.to_le_bytes());
        let err = load_kernel_image(&ram(8 * MIB), &image, path()).unwrap_err();
        assert!(matches!(
            err,
            Error::SegmentOverlapsBootStructure {
                index: 0,
                start: 0x8000,
                structure: "boot stack",
                ..
            }
        ));
        // Past the end of RAM.
        let err = load_kernel_image(&ram(2 * MIB), &elf(None), path()).unwrap_err();
        assert!(matches!(err, Error::KernelPlacement { highest, .. } if highest == 2 * MIB));
        // A memsz that wraps around.
        let mut image = elf(None);
        put(&mut image, 64 + 40, &u64::MAX.to_le_bytes());
        let err = load_kernel_image(&ram(8 * MIB), &image, path()).unwrap_err();
        assert!(matches!(err, Error::KernelPlacement { end: u64::MAX, .. }));
    }

    #[test]
    fn kernel_files_are_read_and_errors_name_them() {
        let dir = temp_dir("kernel-files");
        let ram = ram(8 * MIB);
        let missing = dir.join("vmlinux-missing");
        let err = load_kernel(&ram, &missing).unwrap_err();
        assert!(matches!(err, Error::ReadFile { what: "kernel", .. }));
        assert!(err.to_string().contains("vmlinux-missing"), "{err}");

        let text = dir.join("notes.txt");
        std::fs::write(&text, b"just some text, long enough to be looked at").unwrap();
        let err = load_kernel(&ram, &text).unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");

        let vmlinux = dir.join("vmlinux");
        std::fs::write(&vmlinux, elf(None)).unwrap();
        let k = load_kernel(&ram, &vmlinux).unwrap();
        assert_eq!(k.path, vmlinux);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn kernel_ending_at(end: u64, initrd_addr_max: u64) -> LoadedKernel {
        LoadedKernel {
            path: path().to_path_buf(),
            kind: KernelKind::Elf,
            kernel_start: HIMEM_START,
            entry_64: HIMEM_START,
            pvh_entry: None,
            kernel_end: end,
            setup_header: None,
            initrd_addr_max,
            cmdline_max: ELF_CMDLINE_MAX,
        }
    }

    #[test]
    fn initrd_goes_as_high_as_possible_page_aligned() {
        let k = kernel_ending_at(4 * MIB, ELF_INITRD_ADDR_MAX);
        assert_eq!(
            place_initrd(64 * MIB, &k, 0x1000).unwrap(),
            64 * MIB - 0x1000
        );
        assert_eq!(
            place_initrd(64 * MIB, &k, 0x1001).unwrap(),
            64 * MIB - 0x2000
        );
        // initrd_addr_max is the highest byte it may occupy.
        let k = kernel_ending_at(4 * MIB, 16 * MIB - 1);
        assert_eq!(
            place_initrd(64 * MIB, &k, 0x1000).unwrap(),
            16 * MIB - 0x1000
        );
        // A large guest: below the MMIO gap, not above 4 GiB.
        let k = kernel_ending_at(4 * MIB, u64::from(u32::MAX));
        let addr = place_initrd(8 << 30, &k, 0x1000).unwrap();
        assert_eq!(addr, petrel_guest_mem::layout::MMIO32_START - 0x1000);
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused_with_sizes() {
        let k = kernel_ending_at(60 * MIB + 1, ELF_INITRD_ADDR_MAX);
        // Exactly fits between the page-aligned kernel end and the end of RAM.
        let room = 64 * MIB - (60 * MIB + 0x1000);
        assert_eq!(place_initrd(64 * MIB, &k, room).unwrap(), 60 * MIB + 0x1000);
        let err = place_initrd(64 * MIB, &k, room + 1).unwrap_err();
        assert!(matches!(
            err,
            Error::InitrdDoesNotFit { size, lowest, highest }
                if size == room + 1 && lowest == 60 * MIB + 0x1000 && highest == 64 * MIB
        ));
        assert!(
            err.to_string().contains(&format!("{:#x}", room + 1)),
            "{err}"
        );
        assert!(place_initrd(64 * MIB, &k, u64::MAX).is_err());
    }

    #[test]
    fn initrd_file_is_copied() {
        let dir = temp_dir("initrd-file");
        let ram = ram(16 * MIB);
        let k = kernel_ending_at(4 * MIB, ELF_INITRD_ADDR_MAX);
        let file = dir.join("initrd.cpio");
        std::fs::write(&file, b"070701 cpio").unwrap();
        let initrd = load_initrd(&ram, &file, &k).unwrap();
        assert_eq!(
            initrd,
            Initrd {
                addr: 16 * MIB - 0x1000,
                size: 11
            }
        );
        let mut back = [0u8; 11];
        ram.read(initrd.addr, &mut back).unwrap();
        assert_eq!(&back, b"070701 cpio");

        let empty = dir.join("empty.cpio");
        std::fs::write(&empty, b"").unwrap();
        let err = load_initrd(&ram, &empty, &k).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("initrd {} is empty", empty.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
