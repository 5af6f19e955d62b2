//! Guest memory for the virtio harnesses: two small RAM regions with a hole between them, each
//! mapped between `PROT_NONE` guard pages.
//!
//! vm-memory bounds-checks every access it makes, so a device that goes through it can only get
//! an error for an address outside RAM. What the guards catch is the rest: a device that turns a
//! guest address into a host pointer (or a slice) and runs past the end of a region faults on a
//! guard page at once, which libFuzzer reports as a crash; a buffer that spans the hole between
//! the regions is outside RAM and must be refused, not half-used.

use petrel_devices::virtio::GuestMemoryMmap;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

/// Guest-physical start and size of each RAM region; the hole is `[0x1_0000, 0x2_0000)`.
pub const REGIONS: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];

/// One past the highest guest-physical RAM address.
pub const RAM_END: u64 = 0x3_0000;

const PAGE: usize = 0x1000;

/// A host mapping of `size` bytes with one inaccessible page on each side; its address.
fn guarded_mapping(size: usize) -> usize {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size + 2 * PAGE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "cannot map guest memory");
    let inner = base as usize + PAGE;
    // SAFETY: `[inner, inner + size)` lies inside the mapping just made, which nothing else
    // uses; the guard pages on either side stay PROT_NONE.
    let rc = unsafe {
        libc::mprotect(
            inner as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(rc, 0, "cannot make guest memory accessible");
    inner
}

thread_local! {
    /// The host addresses of this thread's regions, mapped once and never unmapped.
    static MAPS: [usize; 2] = REGIONS.map(|(_, size)| guarded_mapping(size));
}

/// Fresh guest memory over the process's guarded regions, zero-filled.
///
/// Every call on a thread zeroes and reuses the same host pages: only one memory built by this
/// function may be in use per thread at a time (each harness run builds one and drops it before
/// returning).
pub fn guarded_memory() -> GuestMemoryMmap {
    let maps = MAPS.with(|m| *m);
    let regions = REGIONS
        .iter()
        .zip(maps)
        .map(|(&(gpa, size), host)| {
            // SAFETY: `host` is the start of a read-write range of `size` bytes that stays
            // mapped for the life of the process (see `mappings`).
            unsafe { std::ptr::write_bytes(host as *mut u8, 0, size) };
            // SAFETY: as above; prot and flags are those of that range. A raw region does not
            // unmap the range when dropped.
            let mapping = unsafe {
                MmapRegion::<AtomicBitmap>::build_raw(
                    host as *mut u8,
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                )
            }
            .expect("raw guest region");
            GuestRegionMmap::new(mapping, GuestAddress(gpa)).expect("guest region")
        })
        .collect();
    GuestMemoryMmap::from_regions(regions).expect("guest memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory, Permissions};

    #[test]
    fn regions_with_a_hole_and_fresh_contents() {
        let mem = guarded_memory();
        mem.write_obj(0xabcd_u32, GuestAddress(0x2_0000)).unwrap();
        assert!(mem.write_obj(1u8, GuestAddress(0x1_8000)).is_err());
        assert!(mem.write_obj(1u8, GuestAddress(RAM_END)).is_err());
        // A buffer that spans the hole is not RAM.
        assert!(!mem.check_range(GuestAddress(0xff00), 0x200, Permissions::ReadWrite));
        drop(mem);
        let mem = guarded_memory();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2_0000)).unwrap(), 0);
    }
}
