//! Userfaultfd, the little of it that a VMM and a page-fault handler need: a descriptor that
//! reports the first touch of each page of registered memory (missing-page mode) and the
//! ranges the VMM gave back to the host (`UFFD_EVENT_REMOVE`), and the two ways to fill a page
//! (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`).
//!
//! The VMM side ([`Userfaultfd::new`], [`Userfaultfd::register`]) creates the descriptor, as
//! Firecracker does: from `/dev/userfaultfd` where it exists (access by file permission, as in a
//! jail), else with the `userfaultfd(2)` system call. Faults from the kernel (KVM reading guest
//! memory for a vCPU) are reported too, not only faults from user mode.
//! The handler side ([`Userfaultfd::from_fd`], [`Userfaultfd::read_event`],
//! [`Userfaultfd::copy`], [`Userfaultfd::zero`]) serves them. A thread that removes registered
//! memory (`madvise(MADV_DONTNEED)`) waits until the handler has read the [`Event::Remove`], so
//! the handler must keep reading events, and never remove memory itself on its reading thread.
//!
//! The kernel ABI (`linux/userfaultfd.h`) is written out here rather than taken from the
//! `userfaultfd` crate, whose `-sys` part runs bindgen (libclang and the host's kernel headers)
//! at every build; the few structures below have been stable since Linux 4.11.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::{Error, Result};

/// `_IOC` as the kernel's `asm-generic/ioctl.h` builds it.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// The ioctl type of userfaultfd and of `/dev/userfaultfd`.
const UFFDIO: u64 = 0xaa;
/// The API version the handshake asks for.
const UFFD_API: u64 = 0xaa;

/// `UFFDIO_API`: the handshake that fixes the features.
pub const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3f, 24);
/// `UFFDIO_REGISTER`: watch a range.
pub const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0x00, 32);
/// `UFFDIO_WAKE`: wake the threads waiting on a range.
pub const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, 16);
/// `UFFDIO_COPY`: fill missing pages with a copy of the handler's bytes.
pub const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, 0x03, 40);
/// `UFFDIO_ZEROPAGE`: fill missing pages with zeros.
pub const UFFDIO_ZEROPAGE: u64 = ioc(IOC_READ | IOC_WRITE, 0x04, 32);
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: a new userfaultfd.
pub const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, 0x00, 0);

/// `UFFD_FEATURE_EVENT_REMOVE`: `madvise(MADV_DONTNEED/MADV_REMOVE)` on registered memory is
/// reported ([`Event::Remove`]), so that the handler serves zeros there afterwards.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const REGISTER_MODE_MISSING: u64 = 1;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_REMOVE: u8 = 0x15;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg`: the event byte, padding, then 24 bytes whose meaning the event gives.
#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    arg: [u64; 3],
}

/// Something the kernel reported on a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread touched a page of registered memory that has none yet and waits for it.
    Pagefault {
        /// The host virtual address touched, rounded down to its page.
        addr: u64,
    },
    /// The VMM gave the range `[start, end)` back to the host (a balloon inflating): its pages
    /// are gone, and a later touch must get zeros, not the memory file's bytes.
    Remove {
        /// The first byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// An event this module does not interpret (fork, mremap, munmap), by its number.
    Other(u8),
}

/// A userfaultfd (closed on drop).
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

fn uffd_error(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Userfaultfd { op, source }
}

impl Userfaultfd {
    /// A new non-blocking, close-on-exec userfaultfd that reports kernel faults too, with the
    /// API handshake done and the `features` asked for (e.g. [`FEATURE_EVENT_REMOVE`]); a
    /// kernel that lacks one of them is an error.
    pub fn new(features: u64) -> Result<Self> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")
        {
            Ok(dev) => {
                // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new
                // descriptor or -1; `dev` is an open descriptor.
                let fd = unsafe {
                    libc::ioctl(
                        dev.as_raw_fd(),
                        USERFAULTFD_IOC_NEW as _,
                        flags as libc::c_int,
                    )
                };
                if fd < 0 {
                    return Err(uffd_error("create (/dev/userfaultfd)")(
                        io::Error::last_os_error(),
                    ));
                }
                fd
            }
            Err(_) => {
                // SAFETY: userfaultfd(2) takes its flags by value and returns a new descriptor
                // or -1.
                let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) };
                if fd < 0 {
                    return Err(uffd_error("create (userfaultfd(2))")(
                        io::Error::last_os_error(),
                    ));
                }
                fd as RawFd
            }
        };
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let uffd = Userfaultfd { fd };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
        if unsafe { libc::ioctl(uffd.fd.as_raw_fd(), UFFDIO_API as _, &mut api) } < 0 {
            return Err(uffd_error("the API handshake (UFFDIO_API)")(
                io::Error::last_os_error(),
            ));
        }
        if api.features & features != features {
            return Err(uffd_error("the API handshake (UFFDIO_API)")(
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel lacks features {:#x}", features & !api.features),
                ),
            ));
        }
        Ok(uffd)
    }

    /// A userfaultfd received from another process (a page-fault handler's side).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Userfaultfd { fd }
    }

    /// Reports the first touch of every page in `[addr, addr + len)` (missing-page mode).
    /// The range must be page-aligned anonymous (or shared-memory) mappings.
    pub fn register(&self, addr: u64, len: u64) -> Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: addr, len },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`; the kernel
        // checks the range against this process's mappings.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) } < 0 {
            return Err(uffd_error("register guest memory (UFFDIO_REGISTER)")(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The next event, or `None` when none is waiting (the descriptor is non-blocking; wait
    /// for it to be readable with poll or epoll). When the process that registered the memory
    /// is gone, poll reports `POLLHUP` and reads find nothing (`None`).
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut msg = UffdMsg::default();
        let size = std::mem::size_of::<UffdMsg>();
        // SAFETY: reads at most `size` bytes into `msg`, a plain `struct uffd_msg`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        if n as usize != size {
            return Ok(None);
        }
        Ok(Some(match msg.event {
            // arg: flags, address, thread id.
            EVENT_PAGEFAULT => Event::Pagefault { addr: msg.arg[1] },
            // arg: start, end, reserved.
            EVENT_REMOVE => Event::Remove {
                start: msg.arg[0],
                end: msg.arg[1],
            },
            other => Event::Other(other),
        }))
    }

    /// Fills the missing pages of `[dst, dst + len)` with a copy of `len` bytes at `src` (in
    /// this process) and wakes the threads waiting on them. Returns the bytes copied; a page
    /// already present (another fault raced this one) counts as done (`EEXIST` is not an
    /// error). `EAGAIN`: the registering process is changing its mappings; read the events
    /// waiting (a [`Event::Remove`]) and try again.
    pub fn copy(&self, dst: u64, src: *const u8, len: u64) -> io::Result<u64> {
        let mut c = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy`; it reads `len` bytes at
        // `src` in this process (the caller's buffer; the kernel checks the access) and writes
        // only into the other process's registered range.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Ok(len);
            }
            return Err(e);
        }
        Ok(c.copy as u64)
    }

    /// Fills every missing page of `[dst, dst + len)` from `len` bytes at `src` (in this
    /// process), page by page where it must: unlike [`copy`](Self::copy), which stops at the
    /// first page already present, it steps over present pages (`page` bytes each) and goes on.
    /// Returns the bytes it filled. `EAGAIN` with nothing copied (the registering process is
    /// changing its mappings) skips a page: its fault, if one comes, is served then.
    pub fn copy_missing(&self, dst: u64, src: *const u8, len: u64, page: u64) -> io::Result<u64> {
        let mut done = 0u64;
        let mut filled = 0u64;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                src: src as u64 + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: as in `copy`: the kernel reads `len - done` bytes at `src + done` in this
            // process (the caller's buffer of `len` bytes) and writes only into the other
            // process's registered range.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
            if r == 0 {
                return Ok(filled + (len - done));
            }
            let e = io::Error::last_os_error();
            // `copy` holds the bytes copied before the kernel stopped, or a negated errno.
            let copied = u64::try_from(c.copy).unwrap_or(0);
            match e.raw_os_error() {
                Some(libc::EAGAIN) if copied > 0 => {
                    done += copied;
                    filled += copied;
                }
                // The page at `dst + done` is present (the guest faulted it in meanwhile), or
                // the process is changing its mappings: step over it.
                Some(libc::EEXIST) | Some(libc::EAGAIN) => done += page,
                _ => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Fills the missing pages of `[dst, dst + len)` with zeros and wakes the threads waiting
    /// on them (as [`copy`](Self::copy), `EEXIST` is success).
    pub fn zero(&self, dst: u64, len: u64) -> io::Result<u64> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct uffdio_zeropage`.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut z) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Ok(len);
            }
            return Err(e);
        }
        Ok(z.zeropage as u64)
    }

    /// Wakes the threads waiting on `[addr, addr + len)` (they fault again if the pages are
    /// still missing).
    pub fn wake(&self, addr: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start: addr, len };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as _, &mut range) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From linux/userfaultfd.h and linux/ioctl.h on x86_64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
    }

    /// Anonymous private memory of `len` bytes, unmapped on drop.
    struct Anon(u64, usize);
    impl Anon {
        fn new(len: usize) -> Anon {
            // SAFETY: a new private anonymous mapping; checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Anon(p as u64, len)
        }
    }
    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer used.
            unsafe { libc::munmap(self.0 as *mut libc::c_void, self.1) };
        }
    }

    #[test]
    fn faults_are_served_by_copy_and_removals_are_reported() {
        let uffd = match Userfaultfd::new(FEATURE_EVENT_REMOVE) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("SKIPPED: no userfaultfd here: {e}");
                return;
            }
        };
        let mem = Anon::new(4 * 4096);
        uffd.register(mem.0, 4 * 4096).unwrap();
        let base = mem.0;
        // A thread reads page 1 and waits for it.
        let reader = std::thread::spawn(move || {
            // SAFETY: inside the mapping, which outlives the thread (joined below).
            unsafe { std::ptr::read_volatile((base + 4096 + 8) as *const u64) }
        });
        let page = vec![0x5au8; 4096];
        let fault = loop {
            let mut pfd = libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, valid for the call.
            unsafe { libc::poll(&mut pfd, 1, 5000) };
            if let Some(e) = uffd.read_event().unwrap() {
                break e;
            }
        };
        assert_eq!(fault, Event::Pagefault { addr: base + 4096 });
        assert_eq!(uffd.copy(base + 4096, page.as_ptr(), 4096).unwrap(), 4096);
        assert_eq!(reader.join().unwrap(), 0x5a5a_5a5a_5a5a_5a5a);
        // Copying again is not an error (a raced fault).
        assert_eq!(uffd.copy(base + 4096, page.as_ptr(), 4096).unwrap(), 4096);
        assert_eq!(uffd.zero(base, 4096).unwrap(), 4096);
        // Giving the page back is reported; the madvise waits until the event is read, so it
        // runs on a thread of its own.
        let remover = std::thread::spawn(move || {
            // SAFETY: page 1 of the mapping, which outlives the thread (joined below).
            unsafe {
                libc::madvise(
                    (base + 4096) as *mut libc::c_void,
                    4096,
                    libc::MADV_DONTNEED,
                )
            }
        });
        let removed = loop {
            if let Some(e) = uffd.read_event().unwrap() {
                break e;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(
            removed,
            Event::Remove {
                start: base + 4096,
                end: base + 8192
            }
        );
        assert_eq!(remover.join().unwrap(), 0);
        assert_eq!(uffd.read_event().unwrap(), None);
        uffd.wake(base, 4096).unwrap();
    }
}
