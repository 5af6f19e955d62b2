//! A guest's working set: which pages of its RAM the host has mapped for it
//! ([`GuestRam::touched_pages`], read from `/proc/self/pagemap`), and bringing such pages in
//! ahead of the guest ([`GuestRam::prefetch`]).
//!
//! Pages are numbered in RAM order: page `n` is bytes `n * 4096..` of the RAM's regions laid
//! end to end, which is where it sits in a memory file written by
//! [`GuestRam::write_full`] (and where [`GuestRam::from_file`] maps it from). The numbers
//! therefore mean the same on every host and in every process that maps the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::{Error, GuestRam, Result, PAGE};

/// Consecutive pages of guest RAM, numbered in RAM order: page `n` is bytes `n * 4096..` of
/// the RAM's regions laid end to end, as in a memory file written by [`GuestRam::write_full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// The first page.
    pub first: u64,
    /// How many pages.
    pub count: u64,
    /// Whether the guest wrote them (the process holds private copies) rather than only read
    /// them.
    pub written: bool,
}

/// What [`GuestRam::prefetch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefetched {
    /// Pages mapped for reading (shared with the memory file's page cache).
    pub read: u64,
    /// Pages mapped for writing (private copies made ahead of the guest's writes).
    pub written: u64,
    /// Pages skipped because they lie outside this RAM.
    pub outside: u64,
}

/// `/proc/PID/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst): the page is in
/// memory.
const PM_PRESENT: u64 = 1 << 63;
/// The page is swapped out.
const PM_SWAPPED: u64 = 1 << 62;
/// The page is a file page or shared anonymous memory (clear for a private copy).
const PM_FILE: u64 = 1 << 61;

/// Pagemap entries read at a time (512 KiB of entries, 256 MiB of guest RAM).
const ENTRIES_PER_READ: usize = 64 * 1024;

impl GuestRam {
    /// The pages of this RAM the process has mapped now, from `pagemap` (this process's
    /// `/proc/self/pagemap`, opened by the caller, for instance before a seccomp filter that
    /// forbids opening files): a page the guest (or the VMM, or KVM for it) touched since the
    /// RAM was mapped is present, or swapped out. For RAM mapped from a memory file, a page
    /// that is no longer the file's page is one the guest wrote; anonymous RAM (the `Uffd`
    /// backend) cannot tell, so its runs are all unwritten. Adjacent pages of the same kind
    /// come back as one run, in order.
    pub fn touched_pages(&self, pagemap: &File) -> Result<Vec<PageRun>> {
        let from_file = self.backing.is_some();
        let mut runs: Vec<PageRun> = Vec::new();
        let mut ram_page = 0u64;
        let mut buf = vec![0u8; ENTRIES_PER_READ * 8];
        for region in self.mem.iter() {
            let pages = region.len() / PAGE;
            let first_host_page = region.as_ptr() as u64 / PAGE;
            let mut done = 0u64;
            while done < pages {
                let n = (pages - done).min(ENTRIES_PER_READ as u64) as usize;
                let bytes = &mut buf[..n * 8];
                pagemap
                    .read_exact_at(bytes, (first_host_page + done) * 8)
                    .map_err(Error::Pagemap)?;
                for (i, entry) in bytes.chunks_exact(8).enumerate() {
                    let entry = u64::from_le_bytes(entry.try_into().expect("8-byte chunks"));
                    if entry & (PM_PRESENT | PM_SWAPPED) == 0 {
                        continue;
                    }
                    let written = from_file && entry & PM_FILE == 0;
                    push_page(&mut runs, ram_page + done + i as u64, written);
                }
                done += n as u64;
            }
            ram_page += pages;
        }
        Ok(runs)
    }

    /// Brings the pages of `runs` in before the guest asks for them, so that its first touch
    /// of each finds it mapped: first `madvise(MADV_WILLNEED)` over every run (the kernel
    /// starts reading a memory file's pages that are not cached yet, all at once), then
    /// `MADV_POPULATE_READ` for the runs the guest only read (the page cache's pages, shared
    /// with every other process mapping the file) and `MADV_POPULATE_WRITE` for those it wrote
    /// (the private copies its writes would make anyway). Pages outside this RAM are skipped
    /// and counted. What the guest reads is the same with or without this; only the time of
    /// its first touches changes.
    ///
    /// Fails with [`Error::Prefetch`] where the host refuses (before Linux 5.14, which has no
    /// `MADV_POPULATE_*`); pages already brought in stay.
    pub fn prefetch(&self, runs: &[PageRun]) -> Result<Prefetched> {
        let mut done = Prefetched::default();
        let mut spans = Vec::with_capacity(runs.len());
        for run in runs {
            let mut first = run.first;
            let end = run.first.saturating_add(run.count);
            while first < end {
                let Some((host, len)) = self.host_span(first, end - first) else {
                    done.outside += end - first;
                    break;
                };
                spans.push((host, len, run.written));
                first += len / PAGE;
            }
        }
        for &(host, len, _) in &spans {
            // SAFETY: `host..host + len` lies inside one of this RAM's mappings
            // (`host_span`); MADV_WILLNEED only starts reads of the file behind it and
            // changes no contents.
            unsafe { advise(host, len, libc::MADV_WILLNEED) }?;
        }
        for &(host, len, written) in &spans {
            let advice = if written {
                libc::MADV_POPULATE_WRITE
            } else {
                libc::MADV_POPULATE_READ
            };
            // SAFETY: as above; populating maps the pages the guest would have faulted in
            // (a write populate makes the private copy a write would make) and changes no
            // contents.
            unsafe { advise(host, len, advice) }?;
            if written {
                done.written += len / PAGE;
            } else {
                done.read += len / PAGE;
            }
        }
        Ok(done)
    }

    /// The host address and length, in bytes, of the pages from RAM page `first`, at most
    /// `count` of them and within one region; `None` past the end of RAM.
    fn host_span(&self, first: u64, count: u64) -> Option<(*mut u8, u64)> {
        let mut region_first = 0u64;
        for region in self.mem.iter() {
            let pages = region.len() / PAGE;
            if first < region_first + pages {
                let skip = first - region_first;
                let len = count.min(pages - skip) * PAGE;
                // SAFETY: `skip` pages lie inside the region's mapping.
                let host = unsafe { region.as_ptr().add((skip * PAGE) as usize) };
                return Some((host, len));
            }
            region_first += pages;
        }
        None
    }
}

/// Adds page `page` to `runs`, extending the last run when it is the next page of the same kind.
fn push_page(runs: &mut Vec<PageRun>, page: u64, written: bool) {
    if let Some(last) = runs.last_mut() {
        if last.written == written && last.first + last.count == page {
            last.count += 1;
            return;
        }
    }
    runs.push(PageRun {
        first: page,
        count: 1,
        written,
    });
}

/// `madvise(host, len, advice)`, the host's refusal as [`Error::Prefetch`].
///
/// # Safety
/// `host..host + len` must lie inside a mapping of guest RAM, and `advice` must not change
/// what the guest reads there.
unsafe fn advise(host: *mut u8, len: u64, advice: libc::c_int) -> Result<()> {
    // SAFETY: the caller's promise.
    if unsafe { libc::madvise(host.cast(), len as usize, advice) } == 0 {
        Ok(())
    } else {
        Err(Error::Prefetch {
            advice: advice_name(advice),
            source: io::Error::last_os_error(),
        })
    }
}

fn advice_name(advice: libc::c_int) -> &'static str {
    match advice {
        libc::MADV_WILLNEED => "MADV_WILLNEED",
        libc::MADV_POPULATE_READ => "MADV_POPULATE_READ",
        _ => "MADV_POPULATE_WRITE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn pagemap() -> File {
        File::open("/proc/self/pagemap").unwrap()
    }

    /// A memory file of `size` bytes, every page holding its own number.
    fn memory_file(size: u64) -> File {
        let (path, mut f) =
            crate::tests::temp_file(&format!("ws-{size}-{:?}", std::thread::current().id()));
        std::fs::remove_file(&path).unwrap();
        for page in 0..size / PAGE {
            let mut buf = vec![0u8; PAGE as usize];
            buf[..8].copy_from_slice(&page.to_le_bytes());
            f.write_all(&buf).unwrap();
        }
        f
    }

    #[test]
    fn runs_join_pages_of_one_kind() {
        let mut runs = Vec::new();
        for (page, written) in [(3, false), (4, false), (5, true), (6, true), (9, true)] {
            push_page(&mut runs, page, written);
        }
        let run = |first, count, written| PageRun {
            first,
            count,
            written,
        };
        assert_eq!(runs, [run(3, 2, false), run(5, 2, true), run(9, 1, true)]);
    }

    /// Whether `runs` hold `page` as a page of the kind `written`.
    fn holds(runs: &[PageRun], page: u64, written: bool) -> bool {
        runs.iter()
            .any(|r| r.written == written && (r.first..r.first + r.count).contains(&page))
    }

    #[test]
    fn touched_pages_are_the_pages_read_and_written_since_the_mapping() {
        let size = 4 * MIB;
        let file = memory_file(size);
        let ram = GuestRam::from_file(size, &file).unwrap();
        assert_eq!(ram.touched_pages(&pagemap()).unwrap(), []);
        let mut buf = [0u8; 8];
        ram.read(5 * PAGE, &mut buf).unwrap();
        ram.read(6 * PAGE, &mut buf).unwrap();
        ram.write(100 * PAGE, &[1]).unwrap();
        let runs = ram.touched_pages(&pagemap()).unwrap();
        assert!(holds(&runs, 5, false) && holds(&runs, 6, false), "{runs:?}");
        assert!(holds(&runs, 100, true), "{runs:?}");
        // A read fault also maps the neighbours already in the page cache (the kernel's
        // fault-around, 64 KiB by default), never pages far away.
        let pages: u64 = runs.iter().map(|r| r.count).sum();
        assert!(pages <= 2 * 16 + 1, "{runs:?}");
        assert!(!holds(&runs, 500, false) && !holds(&runs, 500, true));
    }

    #[test]
    fn prefetch_maps_the_pages_and_changes_nothing_the_guest_reads() {
        let size = 4 * MIB;
        let file = memory_file(size);
        let ram = GuestRam::from_file(size, &file).unwrap();
        let runs = [
            PageRun {
                first: 10,
                count: 20,
                written: false,
            },
            PageRun {
                first: 40,
                count: 2,
                written: true,
            },
            // Past the end of RAM: skipped, counted.
            PageRun {
                first: size / PAGE - 1,
                count: 3,
                written: false,
            },
        ];
        let done = ram.prefetch(&runs).unwrap();
        assert_eq!(
            done,
            Prefetched {
                read: 21,
                written: 2,
                outside: 2
            }
        );
        // The prefetched pages are present, the written ones as private copies.
        let touched = ram.touched_pages(&pagemap()).unwrap();
        for page in 10..30 {
            assert!(holds(&touched, page, false), "page {page}: {touched:?}");
        }
        assert!(holds(&touched, 40, true) && holds(&touched, 41, true));
        assert!(!holds(&touched, 42, true));
        // Every page still reads as the file's.
        for page in [0, 10, 29, 40, 41, size / PAGE - 1] {
            let mut buf = [0u8; 8];
            ram.read(page * PAGE, &mut buf).unwrap();
            assert_eq!(u64::from_le_bytes(buf), page, "page {page}");
        }
    }
}
