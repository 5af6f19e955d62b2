//! Guest RAM for Petrel, over [`vm_memory`], and the x86 guest-physical layout.
//!
//! [`GuestRam`] allocates anonymous, lazily-backed memory for a guest of a given size, laid out
//! around the 32-bit MMIO gap as [`layout`] describes, and offers reads and writes that are
//! checked against the guest's RAM so that nothing outside it is ever touched.
//!
//! ```
//! use petrel_guest_mem::GuestRam;
//! let ram = GuestRam::new(2 << 20).unwrap();
//! ram.write(0x1000, b"hello").unwrap();
//! let mut buf = [0u8; 5];
//! ram.read(0x1000, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! assert!(ram.write(2 << 20, b"x").is_err());
//! ```

pub mod alloc;
pub mod layout;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub use vm_memory;
/// The vm-memory type that backs guest RAM: mmap regions with a dirty bitmap per page, which
/// records the pages the VMM and its devices write (KVM's dirty log records the guest's own).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Guest RAM must be a whole number of these (4 KiB pages, the KVM memory-slot granularity).
pub const RAM_ALIGNMENT: u64 = 0x1000;

/// Errors from creating or accessing guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size is zero.
    #[error("guest memory size must not be zero")]
    ZeroSize,
    /// The requested size is not a multiple of the page size.
    #[error("guest memory size {size:#x} is not a multiple of {RAM_ALIGNMENT:#x} (4 KiB)")]
    Unaligned {
        /// The size asked for.
        size: u64,
    },
    /// The requested size is more than the host has.
    #[error(
        "guest memory size {} MiB is larger than this host's {} MiB of RAM",
        size >> 20,
        host >> 20
    )]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The host's physical memory.
        host: u64,
    },
    /// The host refused to map the memory.
    #[error("cannot map {size:#x} bytes of guest memory")]
    Map {
        /// The size asked for.
        size: u64,
        /// What vm-memory said.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// An access reached outside guest RAM.
    #[error("guest memory access of {len} bytes at {addr:#x} is outside guest RAM")]
    OutOfRange {
        /// Guest-physical address of the access.
        addr: u64,
        /// Its length.
        len: usize,
    },
}

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One contiguous piece of guest RAM, as KVM needs it for a memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the mapping's first byte.
    pub host_addr: u64,
}

/// A guest's RAM: anonymous memory split around the 32-bit MMIO gap.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Allocates `size` bytes of guest RAM (lazily: pages are backed when first touched).
    pub fn new(size: u64) -> Result<Self> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if size % RAM_ALIGNMENT != 0 {
            return Err(Error::Unaligned { size });
        }
        let host = host_memory_bytes();
        if size > host {
            return Err(Error::TooLarge { size, host });
        }
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mem =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Map { size, source })?;
        Ok(GuestRam { mem, size })
    }

    /// Total RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The underlying vm-memory object, for crates that speak vm-memory (linux-loader,
    /// virtio-queue).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The contiguous regions of RAM, for registering KVM memory slots.
    pub fn regions(&self) -> Vec<RamRegion> {
        self.mem
            .iter()
            .map(|r| RamRegion {
                guest_addr: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect()
    }

    /// Whether `[addr, addr + len)` lies wholly inside one region of guest RAM.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.mem.iter().any(|r| {
            let start = r.start_addr().0;
            addr >= start
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= start + r.len())
        })
    }

    /// Writes `data` at guest-physical `addr`; fails, writing nothing, if any byte is outside RAM.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.check(addr, data.len())?;
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| Error::OutOfRange {
                addr,
                len: data.len(),
            })
    }

    /// Fills `buf` from guest-physical `addr`; fails if any byte is outside RAM.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.check(addr, buf.len())?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| Error::OutOfRange {
                addr,
                len: buf.len(),
            })
    }

    /// Writes a plain little-endian value (an integer or a `#[repr(C)]` struct of them).
    pub fn write_obj<T: vm_memory::ByteValued>(&self, addr: u64, val: T) -> Result<()> {
        self.write(addr, val.as_slice())
    }

    /// Reads a plain little-endian value.
    pub fn read_obj<T: vm_memory::ByteValued + Default>(&self, addr: u64) -> Result<T> {
        let mut val = T::default();
        self.read(addr, val.as_mut_slice())?;
        Ok(val)
    }

    fn check(&self, addr: u64, len: usize) -> Result<()> {
        if self.contains(addr, len as u64) {
            Ok(())
        } else {
            Err(Error::OutOfRange { addr, len })
        }
    }
}

/// The host's physical memory in bytes (the ceiling for one guest's RAM).
pub fn host_memory_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration; it has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_unaligned_and_huge_sizes() {
        assert!(matches!(GuestRam::new(0), Err(Error::ZeroSize)));
        assert!(matches!(
            GuestRam::new(4097),
            Err(Error::Unaligned { size: 4097 })
        ));
        let huge = (host_memory_bytes() + (1 << 30)) & !(RAM_ALIGNMENT - 1);
        let err = GuestRam::new(huge).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
        assert!(err.to_string().contains("larger than this host"));
    }

    #[test]
    fn bounds_are_checked_at_both_edges() {
        let ram = GuestRam::new(0x10000).unwrap();
        ram.write(0xfffc, &[1, 2, 3, 4]).unwrap();
        assert!(matches!(
            ram.write(0xfffd, &[1, 2, 3, 4]),
            Err(Error::OutOfRange { .. })
        ));
        let mut b = [0u8; 4];
        ram.read(0xfffc, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(ram.read(u64::MAX - 1, &mut b).is_err());
        assert!(!ram.contains(u64::MAX, 2));
    }

    #[test]
    fn objects_round_trip() {
        let ram = GuestRam::new(0x10000).unwrap();
        ram.write_obj(0x100, 0xdead_beef_u32).unwrap();
        assert_eq!(ram.read_obj::<u32>(0x100).unwrap(), 0xdead_beef);
    }

    #[test]
    fn one_region_below_the_gap() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let regions = ram.regions();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].guest_addr, 0);
        assert_eq!(regions[0].size, 1 << 20);
    }
}
