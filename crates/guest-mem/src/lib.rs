//! Guest RAM for Petrel, over [`vm_memory`], the x86 guest-physical layout, and the boot vCPU
//! state ([`boot_cpu`]) a loader computes and a vCPU applies.
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
//!
//! # Re-exported dependency
//!
//! [`vm_memory`] is re-exported whole: its types are part of this crate's API
//! ([`GuestRam::memory`], [`GuestRam::read_obj`], [`Error`]), so a caller needs them at the
//! version this crate uses, and `petrel_guest_mem::vm_memory` is that version. A move to a
//! semver-incompatible vm-memory (0.18 to 0.19 today; a new major once it is 1.0) is therefore
//! a semver-incompatible release of this crate.

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod alloc;
pub mod backing;
pub mod boot_cpu;
mod discard;
pub mod layout;
pub mod uffd;
mod working_set;

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
};

/// The vm-memory crate this one is built on, at the version its API uses
/// (see "Re-exported dependency" in the crate docs).
pub use vm_memory;

pub use backing::{HugePagePool, HugePages};
pub use working_set::{PageRun, Prefetched};
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
    /// A memory file is not the size of the guest's RAM.
    #[error("the memory file is {actual} bytes, but the guest has {expected} bytes of RAM")]
    FileSize {
        /// The guest's RAM size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The host refused to map a memory file.
    #[error("cannot map the memory file")]
    MapFile(#[source] vm_memory::mmap::MmapRegionError),
    /// Reading or writing a memory file failed.
    #[error("memory file I/O failed")]
    FileIo(#[source] std::io::Error),
    /// A memory file to be written is the file this RAM maps: writing it would change (or, as
    /// it is first emptied, wipe) the pages the guest has not touched yet.
    #[error(
        "the file to write is the memory file this guest's RAM is mapped from (device {}, \
         inode {}); write to a new file instead",
        .0.dev,
        .0.ino
    )]
    WouldOverwriteMapped(FileId),
    /// A dirty-page bitmap does not cover the region it is for.
    #[error(
        "the dirty-page bitmap of region {region} has {words} words, too few for its {pages} pages"
    )]
    DirtyBitmap {
        /// Index of the region.
        region: usize,
        /// Words given.
        words: usize,
        /// Pages in the region.
        pages: u64,
    },
    /// Guest pages could not be given back to the host ([`GuestRam::discard`]).
    #[error("cannot discard guest memory {addr:#x}..{:#x}", addr.wrapping_add(*len))]
    Discard {
        /// Guest-physical start of the range.
        addr: u64,
        /// Its length.
        len: u64,
        /// Why: an unaligned or out-of-RAM range (`InvalidInput`), or the host's error.
        #[source]
        source: std::io::Error,
    },
    /// With huge pages, the size is not a multiple of 2 MiB.
    #[error(
        "huge_pages is {}: guest memory size {size:#x} is not a multiple of 2 MiB",
        .huge_pages.name()
    )]
    HugePageSize {
        /// The size asked for.
        size: u64,
        /// The backing asked for.
        huge_pages: HugePages,
    },
    /// The host's pool of 2 MiB hugetlbfs pages has too few free pages for the guest.
    #[error(
        "huge_pages is 2M: the guest needs {needed} 2 MiB pages from the host's hugetlbfs pool, \
         which has {available} free of {total} (/proc/sys/vm/nr_hugepages); grow the pool \
         (e.g. echo {} > /proc/sys/vm/nr_hugepages) or set huge_pages to None or Transparent",
        .total + .needed.saturating_sub(*.available)
    )]
    HugePagePool {
        /// Pages the guest needs (its size over 2 MiB).
        needed: u64,
        /// Pages free and not reserved by other mappings.
        available: u64,
        /// Pages in the pool.
        total: u64,
    },
    /// A memory file cannot be mapped onto hugetlbfs pages.
    #[error(
        "huge_pages is 2M: a memory file cannot be mapped onto hugetlbfs pages; restore this \
         snapshot with huge_pages None or Transparent"
    )]
    HugetlbfsFromFile,
    /// `madvise(MADV_HUGEPAGE)` failed.
    #[error("huge_pages is Transparent: madvise(MADV_HUGEPAGE) on guest memory failed")]
    Madvise(#[source] std::io::Error),
    /// The host refused to map huge-page memory.
    #[error("huge_pages is {}: cannot map guest memory", .huge_pages.name())]
    MapHuge {
        /// The backing asked for.
        huge_pages: HugePages,
        /// What vm-memory said.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A userfaultfd operation failed (see [`uffd`]).
    #[error("userfaultfd: cannot {op}")]
    Userfaultfd {
        /// What was being done.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// Reading which pages are mapped from `/proc/self/pagemap` failed
    /// ([`GuestRam::touched_pages`]).
    #[error("cannot read /proc/self/pagemap")]
    Pagemap(#[source] std::io::Error),
    /// The host refused to bring guest pages in ([`GuestRam::prefetch`]).
    #[error("cannot prefetch guest memory: madvise({advice}) failed")]
    Prefetch {
        /// The advice refused.
        advice: &'static str,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
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

/// A file's identity, whatever name reaches it (a hard link, a symlink, `dir/./file`): its
/// device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device that holds the file (`st_dev`).
    pub dev: u64,
    /// Its inode number (`st_ino`).
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of(file: &File) -> std::io::Result<FileId> {
        Ok(Self::from_metadata(&file.metadata()?))
    }

    /// The identity of the file at `path` (following symlinks); `None` if there is none.
    pub fn of_path(path: &std::path::Path) -> std::io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Self::from_metadata(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn from_metadata(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

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
    /// The memory file the RAM is mapped from ([`GuestRam::from_file`]), if any.
    backing: Option<FileId>,
    /// Huge pages behind it ([`backing`]).
    huge_pages: HugePages,
}

impl GuestRam {
    /// Allocates `size` bytes of guest RAM (lazily: pages are backed when first touched).
    pub fn new(size: u64) -> Result<Self> {
        Self::check_size(size)?;
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mem =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Map { size, source })?;
        Ok(GuestRam {
            mem,
            size,
            backing: None,
            huge_pages: HugePages::None,
        })
    }

    /// Maps guest RAM of `size` bytes from a memory file written by
    /// [`write_full`](Self::write_full), privately: pages are read from the file on first touch and copied on
    /// first write, so the file is never changed and many guests can share it. The time this
    /// takes does not grow with `size`. The pages the guest has not touched are read from the
    /// file for as long as the RAM lives, so the file must not be written meanwhile (a new
    /// file renamed over its name is fine: the mapping keeps the old one);
    /// [`write_full`](Self::write_full) and [`write_dirty`](Self::write_dirty) refuse it.
    pub fn from_file(size: u64, file: &File) -> Result<Self> {
        Self::check_size(size)?;
        let meta = file.metadata().map_err(Error::FileIo)?;
        let actual = meta.len();
        if actual != size {
            return Err(Error::FileSize {
                expected: size,
                actual,
            });
        }
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for (start, len) in layout::ram_ranges(size) {
            let fd = file.try_clone().map_err(Error::FileIo)?;
            let bitmap = AtomicBitmap::new(len as usize, PAGE_SIZE_NZ);
            let mapping = MmapRegionBuilder::new_with_bitmap(len as usize, bitmap)
                .with_file_offset(FileOffset::new(fd, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(Error::MapFile)?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(Error::Map {
                size,
                source: vm_memory::mmap::FromRangesError::InvalidGuestRegion,
            })?;
            regions.push(region);
            offset += len;
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Map {
            size,
            source: e.into(),
        })?;
        Ok(GuestRam {
            mem,
            size,
            backing: Some(FileId::from_metadata(&meta)),
            huge_pages: HugePages::None,
        })
    }

    /// The memory file this RAM is mapped from ([`from_file`](Self::from_file)); `None` for
    /// anonymous RAM.
    pub fn backing_file(&self) -> Option<FileId> {
        self.backing
    }

    /// Fails if `out` is the memory file this RAM is mapped from.
    fn check_not_backing(&self, out: &File) -> Result<()> {
        let Some(backing) = self.backing else {
            return Ok(());
        };
        if FileId::of(out).map_err(Error::FileIo)? == backing {
            return Err(Error::WouldOverwriteMapped(backing));
        }
        Ok(())
    }

    /// Writes all of guest RAM to `out`, region after region (the layout
    /// [`from_file`](Self::from_file) reads). Pages of zeros are left as holes, so the file is
    /// sparse. Returns the bytes of data written. `out` must not be the file the RAM is mapped
    /// from ([`Error::WouldOverwriteMapped`]).
    pub fn write_full(&self, out: &File) -> Result<u64> {
        self.check_not_backing(out)?;
        out.set_len(0).map_err(Error::FileIo)?;
        out.set_len(self.size).map_err(Error::FileIo)?;
        let mut written = 0;
        let mut buf = vec![0u8; COPY_CHUNK];
        for (file_offset, region) in self.file_layout() {
            let mut done = 0u64;
            while done < region.len() {
                let n = (region.len() - done).min(COPY_CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                self.read(region.start_addr().0 + done, chunk)?;
                let pages = (n as u64).div_ceil(PAGE);
                let keep = |p: u64| !is_zero(page_of(chunk, p));
                written += write_runs(out, file_offset + done, chunk, pages, keep)?;
                done += n as u64;
            }
        }
        // Dirty tracking starts over from this full copy.
        self.clear_dirty_bitmap();
        Ok(written)
    }

    /// Writes to `out` only the pages written since the last [`write_full`](Self::write_full)
    /// or `write_dirty`: those set in `kvm_dirty` (one bitmap per region, one bit per 4 KiB
    /// page, as KVM's dirty log gives them: the guest's own writes) or in this memory's own
    /// dirty bitmap (what the VMM and its devices wrote). `out` gets the size of guest RAM and
    /// holes everywhere else, so it applies on top of the previous file. Returns the bytes of
    /// data written. `out` must not be the file the RAM is mapped from
    /// ([`Error::WouldOverwriteMapped`]).
    pub fn write_dirty(&self, out: &File, kvm_dirty: &[Vec<u64>]) -> Result<u64> {
        self.check_not_backing(out)?;
        out.set_len(0).map_err(Error::FileIo)?;
        out.set_len(self.size).map_err(Error::FileIo)?;
        let mut written = 0;
        for (i, (file_offset, region)) in self.file_layout().into_iter().enumerate() {
            let pages = region.len().div_ceil(PAGE);
            let kvm = kvm_dirty.get(i).map(Vec::as_slice).unwrap_or(&[]);
            if (kvm.len() as u64) < pages.div_ceil(64) {
                return Err(Error::DirtyBitmap {
                    region: i,
                    words: kvm.len(),
                    pages,
                });
            }
            let ours = region.get_mmap().bitmap().get_and_reset();
            let dirty = |p: u64| {
                let (w, b) = ((p / 64) as usize, p % 64);
                (kvm[w] | ours.get(w).copied().unwrap_or(0)) & (1 << b) != 0
            };
            // Runs of dirty pages, copied a chunk at a time.
            let mut p = 0;
            while p < pages {
                if !dirty(p) {
                    p += 1;
                    continue;
                }
                let mut end = p;
                while end < pages && dirty(end) && end - p < COPY_CHUNK as u64 / PAGE {
                    end += 1;
                }
                let len = ((end - p) * PAGE).min(region.len() - p * PAGE) as usize;
                let mut buf = vec![0u8; len];
                self.read(region.start_addr().0 + p * PAGE, &mut buf)?;
                out.write_all_at(&buf, file_offset + p * PAGE)
                    .map_err(Error::FileIo)?;
                written += len as u64;
                p = end;
            }
        }
        Ok(written)
    }

    /// Forgets which pages the VMM and its devices wrote (as after a full copy).
    pub fn clear_dirty_bitmap(&self) {
        for r in self.mem.iter() {
            r.get_mmap().bitmap().reset();
        }
    }

    /// Each region with its offset in a memory file.
    fn file_layout(&self) -> Vec<(u64, &GuestRegionMmap<AtomicBitmap>)> {
        let mut offset = 0;
        self.mem
            .iter()
            .map(|r| {
                let at = offset;
                offset += r.len();
                (at, r)
            })
            .collect()
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
        self.region_of(addr, len).is_some()
    }

    /// The region of guest RAM that holds all of `[addr, addr + len)`, if one does.
    fn region_of(&self, addr: u64, len: u64) -> Option<&GuestRegionMmap<AtomicBitmap>> {
        self.mem.iter().find(|r| {
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

    fn check_size(size: u64) -> Result<()> {
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
        Ok(())
    }

    fn check(&self, addr: u64, len: usize) -> Result<()> {
        if self.contains(addr, len as u64) {
            Ok(())
        } else {
            Err(Error::OutOfRange { addr, len })
        }
    }
}

/// The page size of memory files and dirty bitmaps (x86's 4 KiB).
/// The size of a guest page, and the unit of a [`PageRun`]: 4 KiB.
pub const PAGE: u64 = 0x1000;
const PAGE_SIZE_NZ: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(PAGE as usize) {
    Some(n) => n,
    None => panic!("page size is not zero"),
};
/// How much of guest RAM is copied at a time when a memory file is written.
const COPY_CHUNK: usize = 2 << 20;

fn page_of(chunk: &[u8], p: u64) -> &[u8] {
    let start = (p * PAGE) as usize;
    &chunk[start..(start + PAGE as usize).min(chunk.len())]
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Writes the runs of pages of `chunk` for which `keep` holds at `offset` onwards in `out`;
/// returns the bytes written.
fn write_runs(
    out: &File,
    offset: u64,
    chunk: &[u8],
    pages: u64,
    keep: impl Fn(u64) -> bool,
) -> Result<u64> {
    let mut written = 0;
    let mut p = 0;
    while p < pages {
        if !keep(p) {
            p += 1;
            continue;
        }
        let mut end = p + 1;
        while end < pages && keep(end) {
            end += 1;
        }
        let start = (p * PAGE) as usize;
        let stop = ((end * PAGE) as usize).min(chunk.len());
        out.write_all_at(&chunk[start..stop], offset + start as u64)
            .map_err(Error::FileIo)?;
        written += (stop - start) as u64;
        p = end;
    }
    Ok(written)
}

/// Applies a Diff memory file to the memory file it was taken on top of: copies every data
/// extent of `diff` (found with `SEEK_DATA`/`SEEK_HOLE`, so holes cost nothing) into `base` at
/// the same offset. Both must be the same size. Afterwards `base` is the memory of the Diff
/// snapshot (what Firecracker's `rebase-snap` tool does). Returns the bytes copied.
pub fn apply_diff(base: &File, diff: &File) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let size = diff.metadata().map_err(Error::FileIo)?.len();
    let base_size = base.metadata().map_err(Error::FileIo)?.len();
    if size != base_size {
        return Err(Error::FileSize {
            expected: base_size,
            actual: size,
        });
    }
    let seek = |offset: u64, whence: i32| -> Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| Error::FileIo(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        // SAFETY: lseek on a descriptor we own changes only its file offset (the copies below
        // use positioned reads and writes, which do not depend on it).
        let r = unsafe { libc::lseek(diff.as_raw_fd(), offset, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no more data after `offset`.
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(Error::FileIo(e)),
            };
        }
        Ok(Some(r as u64))
    };
    let mut copied = 0;
    let mut at = 0;
    let mut buf = vec![0u8; COPY_CHUNK];
    while at < size {
        let Some(start) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(COPY_CHUNK);
            diff.read_exact_at(&mut buf[..n], pos)
                .map_err(Error::FileIo)?;
            base.write_all_at(&buf[..n], pos).map_err(Error::FileIo)?;
            pos += n as u64;
        }
        copied += end - start;
        at = end;
    }
    base.sync_all().map_err(Error::FileIo)?;
    Ok(copied)
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

    pub(crate) fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("petrel-mem-{}-{name}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    #[test]
    fn full_file_round_trips_privately_and_sparsely() {
        use std::os::unix::fs::MetadataExt;
        let ram = GuestRam::new(16 << 20).unwrap();
        ram.write(0x1000, b"first page").unwrap();
        ram.write(0xa0_0000 - 4, b"edge").unwrap();
        let (path, f) = temp_file("full");
        let written = ram.write_full(&f).unwrap();
        assert_eq!(written, 2 * PAGE, "two pages hold data");
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), 16 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "zero pages are holes");

        let restored = GuestRam::from_file(16 << 20, &f).unwrap();
        let mut b = [0u8; 10];
        restored.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"first page");
        let mut e = [0u8; 8];
        restored.read(0xa0_0000 - 4, &mut e).unwrap();
        assert_eq!(&e[..4], b"edge");
        // Writes stay in this guest: the file is unchanged.
        restored.write(0x1000, b"FIRST").unwrap();
        let mut on_disk = [0u8; 5];
        f.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(&on_disk, b"first");

        let other = GuestRam::from_file(16 << 20, &f).unwrap();
        other.read(0x1000, &mut b).unwrap();
        assert_eq!(
            &b, b"first page",
            "a second guest from the same file sees the file"
        );

        assert!(matches!(
            GuestRam::from_file(32 << 20, &f),
            Err(Error::FileSize { expected, actual }) if expected == 32 << 20 && actual == 16 << 20
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn dirty_file_holds_only_the_pages_written_since() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x5000, b"base").unwrap();
        let (base_path, base) = temp_file("base");
        ram.write_full(&base).unwrap();

        // The VMM writes one page (its bitmap); "KVM" reports another.
        ram.write(0x7000, b"device").unwrap();
        let mut kvm = vec![0u64; (8 << 20) / 4096 / 64];
        kvm[0] |= 1 << 9; // page 9: 0x9000
        ram.write(0x9000, b"guest").unwrap();
        let (diff_path, diff) = temp_file("diff");
        let written = ram.write_dirty(&diff, &[kvm.clone()]).unwrap();
        assert_eq!(written, 2 * PAGE);
        assert_eq!(diff.metadata().unwrap().len(), 8 << 20);
        let mut b = [0u8; 6];
        diff.read_exact_at(&mut b, 0x7000).unwrap();
        assert_eq!(&b, b"device");
        let mut untouched = [0xffu8; 4];
        diff.read_exact_at(&mut untouched, 0x5000).unwrap();
        assert_eq!(untouched, [0; 4], "pages not dirtied are holes");

        // Applied to the base, the diff gives the memory as it is now.
        let copied = apply_diff(&base, &diff).unwrap();
        assert!(copied >= 2 * PAGE, "{copied}");
        let merged = GuestRam::from_file(8 << 20, &base).unwrap();
        for (addr, want) in [
            (0x5000, &b"base"[..]),
            (0x7000, b"device"),
            (0x9000, b"guest"),
        ] {
            let mut got = vec![0u8; want.len()];
            merged.read(addr, &mut got).unwrap();
            assert_eq!(got, want);
        }

        // A second diff with nothing new is empty.
        let written = ram.write_dirty(&diff, &[vec![0; kvm.len()]]).unwrap();
        assert_eq!(written, 0);
        assert!(matches!(
            ram.write_dirty(&diff, &[vec![0; 1]]),
            Err(Error::DirtyBitmap { .. })
        ));
        std::fs::remove_file(base_path).unwrap();
        std::fs::remove_file(diff_path).unwrap();
    }

    #[test]
    fn the_mapped_file_is_never_written_and_a_copy_of_the_ram_holds_untouched_pages() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x3000, b"never touched").unwrap();
        ram.write(0x5000, b"written").unwrap();
        let (path, f) = temp_file("mapped");
        ram.write_full(&f).unwrap();
        let restored = GuestRam::from_file(8 << 20, &f).unwrap();
        assert_eq!(restored.backing_file(), Some(FileId::of(&f).unwrap()));
        assert_eq!(ram.backing_file(), None);
        restored.write(0x5000, b"WRITTEN").unwrap();

        // The same file by another name is still the same file.
        let link = path.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&path, &link).unwrap();
        let by_link = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&link)
            .unwrap();
        assert!(matches!(
            restored.write_full(&by_link),
            Err(Error::WouldOverwriteMapped(id)) if id == FileId::of(&f).unwrap()
        ));
        let kvm = vec![vec![u64::MAX; (8 << 20) / 4096 / 64]];
        assert!(matches!(
            restored.write_dirty(&by_link, &kvm),
            Err(Error::WouldOverwriteMapped(_))
        ));
        let mut on_disk = [0u8; 13];
        f.read_exact_at(&mut on_disk, 0x3000).unwrap();
        assert_eq!(&on_disk, b"never touched", "the mapped file is as it was");

        // A copy to a new file holds every page: those read from the mapped file on demand
        // as well as the guest's own. Renamed over the old name, it leaves the mapping alone.
        let (copy_path, copy) = temp_file("mapped-copy");
        restored.write_full(&copy).unwrap();
        let mut b = [0u8; 13];
        copy.read_exact_at(&mut b, 0x3000).unwrap();
        assert_eq!(&b, b"never touched");
        copy.read_exact_at(&mut b[..7], 0x5000).unwrap();
        assert_eq!(&b[..7], b"WRITTEN");
        std::fs::rename(&copy_path, &path).unwrap();
        restored.read(0x3000, &mut b).unwrap();
        assert_eq!(&b, b"never touched");
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(link).unwrap();
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
