//! Huge pages behind guest RAM: Firecracker's `huge_pages` (`None`, `Transparent`, `2M`).
//!
//! - [`HugePages::Transparent`]: anonymous memory advised with `madvise(MADV_HUGEPAGE)`, so
//!   that the kernel backs it with transparent huge pages where it can (the host's
//!   `/sys/kernel/mm/transparent_hugepage/enabled` must be `madvise` or `always`).
//! - [`HugePages::Hugetlbfs2M`]: anonymous `MAP_HUGETLB | MAP_HUGE_2MB` memory from the host's
//!   pool of 2 MiB pages (`/proc/sys/vm/nr_hugepages`). Unlike Firecracker, which maps with
//!   `MAP_NORESERVE` and takes a `SIGBUS` when the pool runs dry while the guest runs, the
//!   mapping here reserves every page when it is made, so a pool that is too small is an
//!   error at start ([`Error::HugePagePool`]) that says how many pages are free and needed.
//!
//! Both need a guest size that is a multiple of 2 MiB ([`Error::HugePageSize`]), as in
//! Firecracker. A memory file can be mapped with transparent huge pages advised, never
//! with hugetlbfs pages ([`Error::HugetlbfsFromFile`]; Firecracker restores those only through
//! a userfaultfd handler).

use std::fs::File;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::{layout, Error, GuestMemoryMmap, GuestRam, Result, PAGE_SIZE_NZ};

/// The size of a huge page on x86-64 (a PMD's span), for both kinds.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Where the host's pool of 2 MiB hugetlbfs pages is counted.
const POOL_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// How guest RAM is backed: Firecracker's `huge_pages` (`HugePageConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HugePages {
    /// The host's regular 4 KiB pages (the default).
    #[default]
    None,
    /// Transparent huge pages, asked for with `madvise(MADV_HUGEPAGE)`.
    Transparent,
    /// Explicit 2 MiB pages from the host's hugetlbfs pool.
    Hugetlbfs2M,
}

impl HugePages {
    /// Firecracker's name of the setting: `None`, `Transparent` or `2M`.
    pub fn name(self) -> &'static str {
        match self {
            HugePages::None => "None",
            HugePages::Transparent => "Transparent",
            HugePages::Hugetlbfs2M => "2M",
        }
    }

    /// The host page size behind guest RAM: 2 MiB for hugetlbfs pages, 4 KiB otherwise (a
    /// transparent huge page may be split back into 4 KiB pages at any time). Whatever
    /// releases guest memory (a balloon's discard) must do it in whole pages of this size.
    pub fn page_size(self) -> u64 {
        match self {
            HugePages::Hugetlbfs2M => HUGE_PAGE_SIZE,
            HugePages::None | HugePages::Transparent => crate::PAGE,
        }
    }

    /// The multiple the guest's memory size must be: 2 MiB with huge pages (Firecracker's
    /// rule, for transparent ones too), 4 KiB without.
    pub fn size_multiple(self) -> u64 {
        match self {
            HugePages::None => crate::RAM_ALIGNMENT,
            HugePages::Transparent | HugePages::Hugetlbfs2M => HUGE_PAGE_SIZE,
        }
    }

    /// `mmap` flags of anonymous guest RAM with this backing.
    fn mmap_flags(self) -> libc::c_int {
        match self {
            // No MAP_NORESERVE: the pool's pages are reserved by the mmap itself, which fails
            // (ENOMEM) rather than leaving a SIGBUS for later.
            HugePages::Hugetlbfs2M => {
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
            }
            HugePages::None | HugePages::Transparent => {
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
            }
        }
    }
}

/// The host's pool of 2 MiB hugetlbfs pages, as `/sys/kernel/mm/hugepages/hugepages-2048kB`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePagePool {
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`), reserved ones included.
    pub free: u64,
    /// Free pages already promised to mappings (`resv_hugepages`).
    pub reserved: u64,
}

impl HugePagePool {
    /// The pool as the host counts it now; `None` if the host has no 2 MiB pool.
    pub fn read() -> Option<HugePagePool> {
        let count = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("{POOL_SYSFS}/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(HugePagePool {
            total: count("nr_hugepages")?,
            free: count("free_hugepages")?,
            reserved: count("resv_hugepages")?,
        })
    }

    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

impl GuestRam {
    /// Allocates `size` bytes of guest RAM backed as `huge_pages` says (lazily, as
    /// [`GuestRam::new`] does, except that hugetlbfs pages are reserved from the pool now).
    /// With huge pages `size` must be a multiple of 2 MiB ([`Error::HugePageSize`]); with
    /// `2M` the pool must have a free page for every 2 MiB ([`Error::HugePagePool`]).
    pub fn with_huge_pages(size: u64, huge_pages: HugePages) -> Result<Self> {
        if huge_pages == HugePages::None {
            return Self::new(size);
        }
        Self::check_size(size)?;
        check_huge_size(size, huge_pages)?;
        let needed = size / HUGE_PAGE_SIZE;
        if huge_pages == HugePages::Hugetlbfs2M {
            check_pool(needed, HugePagePool::read())?;
        }
        let mut regions = Vec::new();
        for (start, len) in layout::ram_ranges(size) {
            let bitmap = AtomicBitmap::new(len as usize, PAGE_SIZE_NZ);
            let mapping = MmapRegionBuilder::new_with_bitmap(len as usize, bitmap)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(huge_pages.mmap_flags())
                .build()
                .map_err(|e| match e {
                    // The pool shrank, or another process reserved pages, since it was read.
                    vm_memory::mmap::MmapRegionError::Mmap(io)
                        if huge_pages == HugePages::Hugetlbfs2M
                            && io.raw_os_error() == Some(libc::ENOMEM) =>
                    {
                        pool_error(needed, HugePagePool::read())
                    }
                    other => Error::MapHuge {
                        huge_pages,
                        source: other,
                    },
                })?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(Error::Map {
                size,
                source: vm_memory::mmap::FromRangesError::InvalidGuestRegion,
            })?;
            regions.push(region);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Map {
            size,
            source: e.into(),
        })?;
        let mut ram = GuestRam {
            mem,
            size,
            backing: None,
            huge_pages,
        };
        if huge_pages == HugePages::Transparent {
            ram.advise_transparent()?;
        }
        Ok(ram)
    }

    /// Maps a memory file as [`GuestRam::from_file`] does, with transparent huge pages advised
    /// for `Transparent` (Firecracker does the same). `2M` is refused
    /// ([`Error::HugetlbfsFromFile`]): a private mapping of a regular file cannot be backed by
    /// hugetlbfs pages; Firecracker restores such guests only through a userfaultfd handler.
    pub fn from_file_with_huge_pages(
        size: u64,
        file: &File,
        huge_pages: HugePages,
    ) -> Result<Self> {
        match huge_pages {
            HugePages::Hugetlbfs2M => Err(Error::HugetlbfsFromFile),
            HugePages::None => Self::from_file(size, file),
            HugePages::Transparent => {
                check_huge_size(size, huge_pages)?;
                let mut ram = Self::from_file(size, file)?;
                ram.advise_transparent()?;
                ram.huge_pages = huge_pages;
                Ok(ram)
            }
        }
    }

    /// How this RAM is backed ([`HugePages::None`] for [`GuestRam::new`] and
    /// [`GuestRam::from_file`]).
    pub fn huge_pages(&self) -> HugePages {
        self.huge_pages
    }

    /// `madvise(MADV_HUGEPAGE)` over every region.
    fn advise_transparent(&mut self) -> Result<()> {
        for r in self.mem.iter() {
            // SAFETY: the range is one of our own live mappings, exactly as mapped; the advice
            // changes how the kernel backs it, never its contents or its lifetime.
            let rc =
                unsafe { libc::madvise(r.as_ptr().cast(), r.len() as usize, libc::MADV_HUGEPAGE) };
            if rc != 0 {
                return Err(Error::Madvise(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

fn check_huge_size(size: u64, huge_pages: HugePages) -> Result<()> {
    if size % huge_pages.size_multiple() != 0 {
        return Err(Error::HugePageSize { size, huge_pages });
    }
    Ok(())
}

/// Fails unless `pool` (none: the host has no 2 MiB pool) has `needed` pages to reserve.
fn check_pool(needed: u64, pool: Option<HugePagePool>) -> Result<()> {
    match pool {
        Some(p) if p.available() >= needed => Ok(()),
        other => Err(pool_error(needed, other)),
    }
}

fn pool_error(needed: u64, pool: Option<HugePagePool>) -> Error {
    let pool = pool.unwrap_or(HugePagePool {
        total: 0,
        free: 0,
        reserved: 0,
    });
    Error::HugePagePool {
        needed,
        available: pool.available(),
        total: pool.total,
    }
}

#[cfg(test)]
mod tests;
