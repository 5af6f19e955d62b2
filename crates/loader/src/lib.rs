//! Loads guest software into Petrel guest RAM and describes how the boot vCPU must start.
//!
//! This crate is pure code: it never talks to KVM. It writes images and boot structures into a
//! [`petrel_guest_mem::GuestRam`] and returns a [`BootCpuState`] (registers, control registers
//! and segments as plain integers) that the vcpu crate converts into `kvm_regs`/`kvm_sregs`.
//!
//! Every input is treated as untrusted user data: sizes and offsets are checked before any
//! write, and every write goes through `GuestRam`, which refuses addresses outside RAM.
//!
//! Booting Linux is two calls: load the kernel (and initrd), then lay out the boot structures
//! for the 64-bit boot protocol (or for PVH, when the kernel has a PVH entry point):
//!
//! ```no_run
//! use std::path::Path;
//! use petrel_guest_mem::GuestRam;
//! use petrel_loader::{configure_linux_boot, load_initrd, load_kernel};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ram = GuestRam::new(256 << 20)?;
//! let kernel = load_kernel(&ram, Path::new("vmlinux"))?;
//! let initrd = load_initrd(&ram, Path::new("initramfs.cpio"), &kernel)?;
//! let state = configure_linux_boot(&ram, &kernel, "console=ttyS0", Some(initrd), 2, None)?;
//! // Hand `state` to the vcpu crate: it sets the registers, sregs and EFER from it.
//! # let _ = state;
//! # Ok(())
//! # }
//! ```
//!
//! Flat binaries start in real mode:
//!
//! ```
//! use petrel_guest_mem::GuestRam;
//! use petrel_loader::{load_raw, CpuMode};
//!
//! let ram = GuestRam::new(1 << 20).unwrap();
//! // `mov al, 0x41; out 0xe9, al; hlt`, loaded at 0x1000 and entered there in real mode.
//! let state = load_raw(&ram, &[0xb0, 0x41, 0xe6, 0xe9, 0xf4], 0x1000, None).unwrap();
//! assert!(matches!(state.mode, CpuMode::Real));
//! assert_eq!(state.code.base + state.rip, 0x1000);
//! ```

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "petrel-loader supports only x86_64 Linux hosts (KVM on x86_64); see docs/using-the-crates.md"
);

use std::path::PathBuf;

pub mod acpi;
pub mod boot;
pub mod bootparams;
pub mod cmdline;
pub mod gdt;
pub mod linux;
pub mod mptable;
pub mod paging;
pub mod raw;
pub mod reserved;
#[cfg(test)]
mod test_images;

pub use acpi::{write_acpi_tables, AcpiConfig, AcpiPlacement};
pub use boot::{configure_linux_boot, configure_pvh_boot};
pub use linux::{load_initrd, load_kernel, Initrd, KernelKind, LoadedKernel};
/// The boot CPU state this crate computes lives in `petrel-guest-mem`, so that the vcpu crate
/// can apply it without depending on this crate (and linux-loader).
pub use petrel_guest_mem::boot_cpu::{BootCpuState, CpuMode, Segment};
pub use raw::{load_raw, load_raw_file};

/// Errors from loading images and writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an image file from the host failed.
    #[error("cannot read {what} {}", path.display())]
    ReadFile {
        /// What the file was meant to be ("raw image", "kernel", "initrd").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An image file or buffer has no bytes.
    #[error("{} is empty", image_name(.what, .path))]
    EmptyImage {
        /// What the image was meant to be.
        what: &'static str,
        /// The file, when the image came from one.
        path: Option<PathBuf>,
    },
    /// An image is larger than the whole of guest RAM.
    #[error(
        "{} of {size:#x} bytes is larger than guest RAM ({ram_size:#x} bytes)",
        image_name(.what, .path)
    )]
    ImageTooLarge {
        /// What the image was meant to be.
        what: &'static str,
        /// The file, when the image came from one.
        path: Option<PathBuf>,
        /// The image's size.
        size: u64,
        /// The guest's RAM size.
        ram_size: u64,
    },
    /// An image would not lie wholly inside one RAM region at the address asked for.
    #[error(
        "{} of {size:#x} bytes at {addr:#x} does not fit in guest RAM \
         ({ram_size:#x} bytes, regions {regions})",
        image_name(.what, .path)
    )]
    LoadAddressOutsideRam {
        /// What the image was meant to be.
        what: &'static str,
        /// The file, when the image came from one.
        path: Option<PathBuf>,
        /// The requested load address.
        addr: u64,
        /// The image's size.
        size: u64,
        /// The guest's RAM size.
        ram_size: u64,
        /// The guest's RAM regions, formatted for the message.
        regions: String,
    },
    /// A real-mode entry point is outside guest RAM or not reachable with a 16-bit segment.
    #[error(
        "entry point {entry:#x} is not usable in real mode: it must lie in guest RAM and \
         below 1 MiB ({REAL_MODE_LIMIT:#x})"
    )]
    RealModeEntry {
        /// The requested entry point.
        entry: u64,
    },
    /// A kernel image is neither an ELF file nor a bzImage.
    #[error("{} is not a Linux kernel (neither ELF nor bzImage)", path.display())]
    NotLinuxKernel {
        /// The file.
        path: PathBuf,
    },
    /// A kernel image is shorter than its own headers say.
    #[error(
        "kernel {} is truncated: it has {size:#x} bytes but its {what} needs {needed:#x}",
        path.display()
    )]
    KernelTruncated {
        /// The file.
        path: PathBuf,
        /// The part that does not fit.
        what: &'static str,
        /// The image's size.
        size: u64,
        /// The size the headers require.
        needed: u64,
    },
    /// A bzImage's boot protocol predates the 64-bit entry point.
    #[error(
        "kernel {} uses boot protocol {}.{:02}; {}.{:02} or later is needed for the 64-bit entry \
         point",
        path.display(), version >> 8, version & 0xff, min >> 8, min & 0xff
    )]
    BootProtocolTooOld {
        /// The file.
        path: PathBuf,
        /// The protocol version in its header (major in the high byte).
        version: u16,
        /// The oldest version this crate boots.
        min: u16,
    },
    /// A bzImage cannot run from 1 MiB (LOADED_HIGH clear in loadflags).
    #[error(
        "kernel {} is a zImage: LOADED_HIGH is clear in loadflags, so it cannot run from 1 MiB",
        path.display()
    )]
    KernelNotLoadedHigh {
        /// The file.
        path: PathBuf,
    },
    /// A bzImage has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags).
    #[error(
        "kernel {} has no 64-bit entry point (XLF_KERNEL_64 is clear in xloadflags {xloadflags:#x})",
        path.display()
    )]
    KernelNot64Bit {
        /// The file.
        path: PathBuf,
        /// The xloadflags field.
        xloadflags: u16,
    },
    /// A kernel header field has a value this crate cannot accept.
    #[error("kernel {} has an invalid {field}: {value:#x}", path.display())]
    InvalidKernelHeader {
        /// The file.
        path: PathBuf,
        /// The header field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A kernel would occupy memory outside the RAM it may use.
    #[error(
        "kernel {} needs guest memory [{start:#x}, {end:#x}), outside the RAM it may use \
         [{lowest:#x}, {highest:#x})",
        path.display()
    )]
    KernelPlacement {
        /// The file.
        path: PathBuf,
        /// First byte the kernel needs.
        start: u64,
        /// One past the last byte the kernel needs.
        end: u64,
        /// Lowest usable address (1 MiB for a bzImage; 0 for an ELF kernel, whose segments
        /// are also checked against the boot structures).
        lowest: u64,
        /// One past the highest usable address (end of RAM below the MMIO gap).
        highest: u64,
    },
    /// An ELF kernel's loadable segment would overlap one of Petrel's boot structures.
    #[error(
        "kernel {}: loadable segment {index} needs guest memory [{start:#x}, {end:#x}), which \
         overlaps Petrel's {structure} at [{structure_start:#x}, {structure_end:#x})",
        path.display()
    )]
    SegmentOverlapsBootStructure {
        /// The file.
        path: PathBuf,
        /// The segment's index among the program headers.
        index: u64,
        /// First byte of the segment (`p_paddr`).
        start: u64,
        /// One past its last byte (`p_paddr + p_memsz`).
        end: u64,
        /// The boot structure it overlaps.
        structure: &'static str,
        /// First byte of that structure.
        structure_start: u64,
        /// One past its last byte.
        structure_end: u64,
    },
    /// linux-loader failed to load a kernel that passed our checks.
    #[error("cannot load kernel {}", path.display())]
    LoadKernel {
        /// The file.
        path: PathBuf,
        /// What linux-loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// There is no room for the initrd between the kernel and the highest address allowed.
    #[error(
        "initrd of {size:#x} bytes does not fit between the kernel's end {lowest:#x} and \
         {highest:#x} (the lower of the kernel's initrd_addr_max and the end of RAM below 4 GiB)"
    )]
    InitrdDoesNotFit {
        /// The initrd's size.
        size: u64,
        /// Where the kernel's memory ends.
        lowest: u64,
        /// One past the highest address the initrd may use.
        highest: u64,
    },
    /// The kernel command line is longer than the kernel or the layout allows.
    #[error("kernel command line is {len} bytes long; the limit is {max}")]
    CmdlineTooLong {
        /// Its length (without the NUL).
        len: usize,
        /// The most bytes allowed (without the NUL).
        max: usize,
    },
    /// linux-loader refused the kernel command line.
    #[error("invalid kernel command line")]
    BuildCmdline {
        /// What linux-loader said.
        #[source]
        source: linux_loader::cmdline::Error,
    },
    /// An initrd handed to the boot configuration is not addressable by the boot protocol.
    #[error(
        "initrd at {addr:#x} ({size:#x} bytes) is not in guest RAM below 4 GiB, where the boot \
         protocol can describe it"
    )]
    InitrdPlacement {
        /// Its address.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// The e820 map has more entries than the zero page holds.
    #[error("the e820 map has {entries} entries; the zero page holds {max}")]
    E820TableFull {
        /// Entries needed.
        entries: usize,
        /// Entries the zero page holds.
        max: usize,
    },
    /// PVH boot was asked for a kernel without a PVH entry point.
    #[error(
        "kernel {} has no PVH entry point: {}",
        path.display(),
        match kind {
            KernelKind::BzImage => "it is a bzImage (PVH starts the ELF vmlinux, when built \
                                    with CONFIG_PVH)",
            KernelKind::Elf => "its ELF has no XEN_ELFNOTE_PHYS32_ENTRY note",
        }
    )]
    NoPvhEntry {
        /// The file.
        path: PathBuf,
        /// Its format.
        kind: KernelKind,
    },
    /// The MP table cannot describe this many vCPUs.
    #[error("cannot build the MP table for {num_cpus} vCPUs: between 1 and {max} fit in the EBDA")]
    MpTableCpuCount {
        /// The vCPU count asked for.
        num_cpus: u8,
        /// The most that fit.
        max: u8,
    },
    /// The MADT cannot describe this many vCPUs.
    #[error("cannot build the ACPI tables for {vcpus} vCPUs: between 1 and {max} fit in the MADT")]
    AcpiVcpuCount {
        /// The vCPU count asked for.
        vcpus: u8,
        /// The most the MADT describes.
        max: u8,
    },
    /// The ACPI tables (with the DSDT body the caller gave) do not fit in the ACPI area.
    #[error(
        "the ACPI tables need {size:#x} bytes, more than the {room:#x} bytes the layout keeps for \
         them (is the DSDT body that large?)"
    )]
    AcpiTablesTooLarge {
        /// Bytes the RSDP and the tables need.
        size: u64,
        /// Bytes the layout has for them.
        room: u64,
    },
    /// Guest RAM does not cover the ACPI area, where the tables and the VMGenID buffer go.
    #[error(
        "guest RAM of {ram_size:#x} bytes does not cover the ACPI area [{start:#x}, {end:#x}): \
         ACPI needs at least 1 MiB of guest RAM"
    )]
    AcpiOutsideRam {
        /// The guest's RAM size.
        ram_size: u64,
        /// First byte of the ACPI area.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// Writing a boot structure or image into guest memory failed.
    #[error("cannot write {what} at {addr:#x} into guest memory")]
    WriteGuestMemory {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What guest-mem said.
        #[source]
        source: petrel_guest_mem::Error,
    },
}

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The first address real mode cannot reach with `selector << 4` bases and 16-bit offsets
/// (1 MiB, with the A20 line wrapping; Intel SDM vol. 3, 21.1.1).
pub const REAL_MODE_LIMIT: u64 = 0x10_0000;

/// "raw image" or "raw image /path/to/file", for error messages.
fn image_name(what: &str, path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{what} {}", p.display()),
        None => what.to_string(),
    }
}

/// The RAM regions of `ram` as `[start, end)` pairs, for error messages.
fn describe_regions(ram: &petrel_guest_mem::GuestRam) -> String {
    ram.regions()
        .iter()
        .map(|r| format!("[{:#x}, {:#x})", r.guest_addr, r.guest_addr + r.size))
        .collect::<Vec<_>>()
        .join(", ")
}
