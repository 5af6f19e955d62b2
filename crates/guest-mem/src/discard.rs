//! Giving guest pages back to the host ([`GuestRam::discard`]), for the balloon and free page
//! reporting, and counting what the host holds ([`GuestRam::resident_bytes`]).

use std::io;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::{Error, GuestRam, Result, PAGE};

impl GuestRam {
    /// Frees the host memory behind guest-physical `[addr, addr + len)`, which must be
    /// page-aligned and lie within one region of RAM. The guest reads zeros there afterwards,
    /// and the pages cost the host nothing until it touches them again.
    ///
    /// Anonymous RAM ([`GuestRam::new`]) gets `madvise(MADV_DONTNEED)`; on hugetlbfs pages
    /// ([`HugePages::Hugetlbfs2M`](crate::HugePages)) only the whole 2 MiB pages inside the
    /// range are freed (a 2 MiB page is the host's smallest unit there; the rest of the range
    /// stays as it is, and what the guest reads there is then whatever it wrote). RAM mapped privately
    /// from a memory file ([`GuestRam::from_file`]) gets a fresh anonymous mapping over the
    /// range (`MAP_FIXED`): `MADV_DONTNEED` there would only drop the guest's private copies
    /// and show the file's pages again, which the host would then read back in.
    pub fn discard(&self, addr: u64, len: u64) -> Result<()> {
        let refuse = |why: &str| Error::Discard {
            addr,
            len,
            source: io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
        };
        if addr % PAGE != 0 || len % PAGE != 0 || len == 0 {
            return Err(refuse("not a whole number of 4 KiB pages"));
        }
        let region = self
            .region_of(addr, len)
            .ok_or_else(|| refuse("not within one region of guest RAM"))?;
        // Only whole host pages can be freed: all of them on 4 KiB pages, the 2 MiB pages
        // the range covers on hugetlbfs.
        let unit = self.huge_pages.page_size();
        let (addr, len) = {
            let start = addr.next_multiple_of(unit);
            let end = (addr + len) / unit * unit;
            if end <= start {
                return Ok(());
            }
            (start, end - start)
        };
        let offset = addr - region.start_addr().0;
        // SAFETY: `offset + len` lies within the region (checked when it was found), so the
        // pointer stays inside the mapping vm-memory made for it.
        let host = unsafe { region.as_ptr().add(offset as usize) }.cast::<libc::c_void>();
        let done = if self.backing.is_some() {
            // SAFETY: replaces whole pages inside this RAM's own mapping with anonymous memory
            // of the same protection; no Rust reference into guest RAM is held across it (the
            // VMM reaches guest memory only through vm-memory's volatile accessors).
            let mapped = unsafe {
                libc::mmap(
                    host,
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            mapped != libc::MAP_FAILED
        } else {
            // SAFETY: drops whole pages inside this RAM's own anonymous mapping; they read as
            // zeros afterwards, which is what the guest was told.
            unsafe { libc::madvise(host, len as usize, libc::MADV_DONTNEED) == 0 }
        };
        if done {
            Ok(())
        } else {
            Err(Error::Discard {
                addr,
                len,
                source: io::Error::last_os_error(),
            })
        }
    }

    /// How many bytes of guest RAM the host holds in memory now (`mincore`), for tests and
    /// benchmarks of the balloon. Pages of a memory file count when they are in the page
    /// cache, whoever read them.
    pub fn resident_bytes(&self) -> Result<u64> {
        let mut resident = 0u64;
        for region in self.mem.iter() {
            let pages = region.len().div_ceil(PAGE) as usize;
            let mut vec = vec![0u8; pages];
            // SAFETY: the region's mapping is `region.len()` bytes from `as_ptr()`, and `vec`
            // has one byte per page of it, as mincore(2) writes.
            let rc = unsafe {
                libc::mincore(
                    region.as_ptr().cast::<libc::c_void>(),
                    region.len() as usize,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(Error::FileIo(io::Error::last_os_error()));
            }
            resident += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE;
        }
        Ok(resident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn fill(ram: &GuestRam, addr: u64, len: u64, byte: u8) {
        ram.write(addr, &vec![byte; len as usize]).unwrap();
    }

    fn all(ram: &GuestRam, addr: u64, len: u64, byte: u8) -> bool {
        let mut buf = vec![0u8; len as usize];
        ram.read(addr, &mut buf).unwrap();
        buf.iter().all(|&b| b == byte)
    }

    #[test]
    fn discarded_anonymous_pages_read_zero_and_leave_the_host() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        fill(&ram, 0, 8 * MIB, 0xaa);
        let before = ram.resident_bytes().unwrap();
        assert!(before >= 8 * MIB, "{before}");
        ram.discard(MIB, 4 * MIB).unwrap();
        let after = ram.resident_bytes().unwrap();
        assert_eq!(before - after, 4 * MIB);
        assert!(all(&ram, MIB, 4 * MIB, 0));
        assert!(all(&ram, 0, MIB, 0xaa));
        assert!(all(&ram, 5 * MIB, 3 * MIB, 0xaa));
        // Touched again, a page is the guest's as before.
        fill(&ram, MIB, PAGE, 0x55);
        assert!(all(&ram, MIB, PAGE, 0x55));
    }

    #[test]
    fn discarded_pages_of_a_memory_file_read_zero_not_the_file() {
        let ram = GuestRam::new(4 * MIB).unwrap();
        fill(&ram, 0, 4 * MIB, 0x77);
        let file = tempfile_with(&ram);
        let restored = GuestRam::from_file(4 * MIB, &file).unwrap();
        // One page written by the guest after the restore (a private copy), one not.
        fill(&restored, 0, PAGE, 0x11);
        restored.discard(0, 2 * PAGE).unwrap();
        assert!(all(&restored, 0, 2 * PAGE, 0));
        assert!(all(&restored, 2 * PAGE, PAGE, 0x77));
        // The file is untouched, and a full snapshot of the restored RAM has holes there.
        let mut buf = vec![0u8; PAGE as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0x77));
        let (out_path, out) = crate::tests::temp_file("discard-out");
        let written = restored.write_full(&out).unwrap();
        assert_eq!(written, 4 * MIB - 2 * PAGE);
        std::fs::remove_file(out_path).unwrap();
    }

    #[test]
    fn discards_outside_ram_or_off_page_are_refused_and_change_nothing() {
        let ram = GuestRam::new(4 * MIB).unwrap();
        fill(&ram, 0, 4 * MIB, 0x33);
        for (addr, len) in [
            (4 * MIB, PAGE),
            (4 * MIB - PAGE, 2 * PAGE),
            (u64::MAX - PAGE + 1, PAGE),
            (1, PAGE),
            (0, 1),
            (0, 0),
        ] {
            let e = ram.discard(addr, len).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{addr:#x}")),
                "{addr:#x}+{len:#x}: {e}"
            );
        }
        assert!(all(&ram, 0, 4 * MIB, 0x33));
    }

    /// A memory file of `ram`, already unlinked.
    fn tempfile_with(ram: &GuestRam) -> std::fs::File {
        let (path, file) = crate::tests::temp_file("discard-base");
        std::fs::remove_file(path).unwrap();
        ram.write_full(&file).unwrap();
        file
    }
}
