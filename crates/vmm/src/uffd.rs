//! The `Uffd` memory backend of a restore, as Firecracker defines it
//! (`docs/snapshotting/handling-page-faults-on-snapshot-resume.md` in its tree): guest RAM is
//! anonymous private memory registered with a userfaultfd (missing-page mode, with
//! `UFFD_FEATURE_EVENT_REMOVE` so that a balloon's removals reach the handler), and another
//! process, the page-fault handler, listening on a Unix socket, fills each page on its first
//! touch. Petrel connects to the socket and sends one message: the userfaultfd (`SCM_RIGHTS`)
//! with the memory layout as JSON, an array of [`GuestRegionUffdMapping`]. A handler written for
//! Firecracker serves Petrel unchanged.
//!
//! Petrel keeps its end of the connection open for as long as the VM lives, and so must the
//! handler (Firecracker's example handlers do): [`HandlerWatch`], on the VM's event loop, takes
//! the connection's hang-up as the handler's end and stops the VM with
//! [`Error::PageFaultHandlerGone`], since no page the guest
//! has not touched yet could be served any more.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_guest_mem::uffd::{Event, Userfaultfd, FEATURE_EVENT_REMOVE};
use petrel_guest_mem::{GuestRam, PageRun};
use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::{Error, Result};

/// The page size of guest RAM (no huge pages).
const PAGE_SIZE: usize = 4096;

/// The field of `PUT /snapshot/load` that names the handler's socket, as errors name it.
pub const BACKEND_PATH_FIELD: &str = "mem_backend.backend_path";

/// One region of guest RAM, as the handshake message describes it (Firecracker's
/// `GuestRegionUffdMapping`, field for field): the handler copies the memory file's bytes
/// `[offset, offset + size)` to `[base_host_virt_addr, base_host_virt_addr + size)` in the
/// VMM's address space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Where the region starts in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: usize,
    /// Where its bytes start in the memory file.
    pub offset: u64,
    /// Its page size in bytes (4096: Petrel has no huge pages).
    pub page_size: usize,
    /// The same page size in bytes, under the name Firecracker's first message used (it is
    /// not in KiB despite the name; kept for handlers that read it).
    pub page_size_kib: usize,
}

/// The handshake's regions for `ram`: its regions in order, at consecutive offsets of the
/// memory file (the layout [`GuestRam::write_full`] writes).
pub fn mappings(ram: &GuestRam) -> Vec<GuestRegionUffdMapping> {
    let mut offset = 0;
    ram.regions()
        .into_iter()
        .map(|r| {
            let m = GuestRegionUffdMapping {
                base_host_virt_addr: r.host_addr,
                size: r.size as usize,
                offset,
                page_size: PAGE_SIZE,
                page_size_kib: PAGE_SIZE,
            };
            offset += r.size;
            m
        })
        .collect()
}

/// Guest RAM served by a page-fault handler: the userfaultfd (kept for as long as the RAM is,
/// so that a handler's end leaves faults waiting rather than turning the guest's memory into
/// zeros) and the connection to the handler.
#[derive(Debug)]
pub struct UffdBackend {
    /// The userfaultfd the RAM is registered with.
    pub uffd: Userfaultfd,
    /// The connection the descriptor was sent on, open while the VM lives.
    pub stream: UnixStream,
    /// The handler's socket.
    pub socket: PathBuf,
}

/// Registers all of `ram` (fresh anonymous memory no one has touched) with a new userfaultfd,
/// connects to the handler listening on `socket` and sends it the descriptor and the layout.
/// A socket nobody listens on is [`Error::InvalidConfig`] naming
/// `mem_backend.backend_path`.
pub fn serve_from_handler(ram: &GuestRam, socket: &Path) -> Result<UffdBackend> {
    let uffd = Userfaultfd::new(FEATURE_EVENT_REMOVE).map_err(Error::Uffd)?;
    for r in ram.regions() {
        uffd.register(r.host_addr, r.size).map_err(Error::Uffd)?;
    }
    let bad_socket = |why: String| Error::InvalidConfig {
        field: BACKEND_PATH_FIELD.into(),
        value: socket.display().to_string(),
        why,
    };
    let stream = UnixStream::connect(socket)
        .map_err(|e| bad_socket(format!("cannot connect to a page-fault handler there: {e}")))?;
    let message = serde_json::to_string(&mappings(ram)).expect("plain numbers serialize");
    let sent = stream
        .send_with_fd(message.as_bytes(), uffd.as_raw_fd())
        .map_err(|e| {
            bad_socket(format!(
                "cannot send the page-fault handler its descriptor: {e}"
            ))
        })?;
    if sent != message.len() {
        return Err(bad_socket(format!(
            "sent {sent} of the handshake's {} bytes",
            message.len()
        )));
    }
    Ok(UffdBackend {
        uffd,
        stream,
        socket: socket.to_path_buf(),
    })
}

/// The event-loop subscriber that watches the connection to the page-fault handler and calls
/// `on_gone` once when the handler closes it (it ended, or was killed). Bytes the handler sends
/// are read and ignored.
pub struct HandlerWatch {
    stream: UnixStream,
    on_gone: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for HandlerWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerWatch")
            .field("stream", &self.stream)
            .field("gone", &self.on_gone.is_none())
            .finish()
    }
}

impl HandlerWatch {
    /// Watches `stream` (made non-blocking here).
    pub fn new(
        stream: UnixStream,
        on_gone: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(HandlerWatch {
            stream,
            on_gone: Some(Box::new(on_gone)),
        })
    }

    fn gone(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(
            &self.stream,
            EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP,
        ));
        if let Some(f) = self.on_gone.take() {
            f();
        }
    }
}

impl MutEventSubscriber for HandlerWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(
            &self.stream,
            EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP,
        ));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            return self.gone(ops);
        }
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return self.gone(ops),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return self.gone(ops),
            }
        }
    }
}

/// The memory file, mapped read-only: the source of every copy.
struct Source {
    addr: *const u8,
    len: usize,
}

impl Source {
    fn map(file: &File) -> std::io::Result<Source> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(std::io::Error::other("the memory file is empty"));
        }
        // SAFETY: a new private read-only mapping of the whole file; checked below, unmapped
        // on drop, never written.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Source {
            addr: addr.cast(),
            len,
        })
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer used.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// What a page-fault handler did while it served one VMM ([`serve`]'s count). Shown as
/// `served N pages; M removals of B bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Faults filled with a page: the memory file's bytes, or zeros in a removed range.
    pub pages: u64,
    /// `UFFD_EVENT_REMOVE` events read: the VMM gave a range back to the host (a balloon).
    pub removals: u64,
    /// The bytes those removals covered, summed (a range removed twice counts twice).
    pub removed_bytes: u64,
    /// Pages filled ahead of the guest from a working set ([`serve_with_working_set`]).
    pub prefetched: u64,
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "served {} pages; {} removals of {} bytes",
            self.pages, self.removals, self.removed_bytes
        )?;
        if self.prefetched > 0 {
            write!(f, "; prefetched {} pages", self.prefetched)?;
        }
        Ok(())
    }
}

/// A page-fault handler's work (the `uffd_handler` example's, and the tests'): receives the
/// userfaultfd and the layout on `stream` (a connection accepted on the handler's socket, from
/// Petrel or Firecracker), then serves each fault from `mem_file` (`UFFDIO_COPY`, one page at a
/// time) or with zeros where the VMM removed the memory (`UFFD_EVENT_REMOVE`), until the VMM
/// closes the connection. Returns what it served and the removals it saw.
pub fn serve(stream: UnixStream, mem_file: &File) -> std::io::Result<Served> {
    serve_with_working_set(stream, mem_file, &[])
}

/// Pages the handler fills ahead of the guest at a time, between two looks for faults.
const PREFETCH_CHUNK_PAGES: u64 = 256;

/// [`serve`], first filling the pages of a working set (`working_set`, numbered in the
/// memory file; see [`crate::working_set`]) ahead of the guest: in chunks of
/// 256 pages, serving the faults and reading the removals waiting before each
/// chunk, so that the guest never waits long behind the prefetch. Pages already present
/// (faulted in meanwhile) are stepped over, removed ones left alone, and pages outside the
/// layout skipped: the working set only decides when a page is filled, never with what.
pub fn serve_with_working_set(
    stream: UnixStream,
    mem_file: &File,
    working_set: &[PageRun],
) -> std::io::Result<Served> {
    let file = mem_file;
    let mut buf = vec![0u8; 64 << 10];
    let (n, fd) = stream.recv_with_fd(&mut buf)?;
    let fd = fd.ok_or_else(|| std::io::Error::other("the VMM sent no userfaultfd"))?;
    let uffd = Userfaultfd::from_fd(OwnedFd::from(fd));
    let regions: Vec<GuestRegionUffdMapping> = serde_json::from_slice(&buf[..n]).map_err(|e| {
        std::io::Error::other(format!("the VMM's layout is not the expected JSON: {e}"))
    })?;
    let source = Source::map(file)?;
    let mut removed = Removed::default();
    let mut served = Served::default();
    let handle_events = |removed: &mut Removed, served: &mut Served| -> std::io::Result<()> {
        while let Some(event) = uffd.read_event()? {
            match event {
                Event::Pagefault { addr } => {
                    serve_page(&uffd, &regions, &source, removed, addr)?;
                    served.pages += 1;
                }
                Event::Remove { start, end } => {
                    removed.add(start, end);
                    served.removals += 1;
                    served.removed_bytes += end.saturating_sub(start);
                }
                Event::Other(_) => {}
            }
        }
        Ok(())
    };
    for run in working_set {
        let mut first = run.first;
        let end = run.first.saturating_add(run.count);
        while first < end {
            handle_events(&mut removed, &mut served)?;
            let count = (end - first).min(PREFETCH_CHUNK_PAGES);
            served.prefetched += prefetch(&uffd, &regions, &source, &removed, first, count)?;
            first += count;
        }
    }
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds, valid for the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Ok(served);
        }
        handle_events(&mut removed, &mut served)?;
    }
}

/// [`serve`], returning only the number of pages served.
pub fn serve_pages(stream: UnixStream, mem_file: &File) -> std::io::Result<u64> {
    serve(stream, mem_file).map(|s| s.pages)
}

/// The ranges `[start, end)` the VMM removed, in the order it removed them; a range that
/// continues the last one extends it (a balloon removes page after page).
#[derive(Debug, Default)]
struct Removed(Vec<(u64, u64)>);

impl Removed {
    fn add(&mut self, start: u64, end: u64) {
        match self.0.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.0.push((start, end)),
        }
    }

    fn contains(&self, addr: u64) -> bool {
        self.0.iter().any(|&(s, e)| addr >= s && addr < e)
    }
}

/// Fills the page at `addr`: zeros where the VMM removed it, else the memory file's bytes.
fn serve_page(
    uffd: &Userfaultfd,
    regions: &[GuestRegionUffdMapping],
    source: &Source,
    removed: &Removed,
    addr: u64,
) -> std::io::Result<()> {
    let r = regions
        .iter()
        .find(|r| addr >= r.base_host_virt_addr && addr - r.base_host_virt_addr < r.size as u64)
        .ok_or_else(|| {
            std::io::Error::other(format!("a fault at {addr:#x}, outside guest memory"))
        })?;
    let page = r.page_size as u64;
    let start = addr & !(page - 1);
    let at = r.offset + (start - r.base_host_virt_addr);
    let result = if removed.contains(start) {
        uffd.zero(start, page)
    } else if at + page <= source.len as u64 {
        // SAFETY: `at + page` is within the mapping of `source.len` bytes (checked above).
        uffd.copy(start, unsafe { source.addr.add(at as usize) }, page)
    } else {
        return Err(std::io::Error::other(format!(
            "a fault at {addr:#x}, past the end of the memory file"
        )));
    };
    match result {
        Ok(_) => Ok(()),
        // The VMM is changing its mappings (a removal is on its way): the fault comes back.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(()),
        // The VMM is gone.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(std::io::Error::other(format!(
            "cannot fill the page at {start:#x}: {e}"
        ))),
    }
}

/// Fills the `count` pages of the memory file from page `first` that are still missing, where
/// the layout maps them and the VMM has not removed them, a run of adjacent pages at a time;
/// returns how many it filled.
fn prefetch(
    uffd: &Userfaultfd,
    regions: &[GuestRegionUffdMapping],
    source: &Source,
    removed: &Removed,
    first: u64,
    count: u64,
) -> std::io::Result<u64> {
    let page = PAGE_SIZE as u64;
    // The pages' host addresses and memory-file offsets, where they can be filled.
    let fillable = (first..first + count).filter_map(|p| {
        let at = p * page;
        let r = regions
            .iter()
            .find(|r| at >= r.offset && at - r.offset < r.size as u64)?;
        let addr = r.base_host_virt_addr + (at - r.offset);
        (!removed.contains(addr) && at + page <= source.len as u64).then_some((addr, at))
    });
    // Adjacent pages (in guest memory and in the file) are filled with one copy.
    let mut spans: Vec<(u64, u64, u64)> = Vec::new();
    for (addr, at) in fillable {
        match spans.last_mut() {
            Some((a, f, len)) if *a + *len == addr && *f + *len == at => *len += page,
            _ => spans.push((addr, at, page)),
        }
    }
    let mut filled = 0;
    for (addr, at, len) in spans {
        // SAFETY: `at + len` is within the mapping of `source.len` bytes (checked above).
        let src = unsafe { source.addr.add(at as usize) };
        match uffd.copy_missing(addr, src, len, page) {
            Ok(n) => filled += n / page,
            // The VMM is gone: the serving loop sees the hang-up next.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(filled),
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "cannot prefetch the pages at {addr:#x}: {e}"
                )))
            }
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_firecrackers() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let m = mappings(&ram);
        assert_eq!(m.len(), 1);
        let text = serde_json::to_string(&m).unwrap();
        let expected = format!(
            "[{{\"base_host_virt_addr\":{},\"size\":16777216,\"offset\":0,\"page_size\":4096,\
             \"page_size_kib\":4096}}]",
            m[0].base_host_virt_addr
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn removals_extend_the_last_range_and_are_shown_in_the_closing_line() {
        let mut removed = Removed::default();
        removed.add(0x1000, 0x2000);
        removed.add(0x2000, 0x3000);
        removed.add(0x8000, 0x9000);
        assert_eq!(removed.0, vec![(0x1000, 0x3000), (0x8000, 0x9000)]);
        assert!(removed.contains(0x2fff) && removed.contains(0x8000));
        assert!(!removed.contains(0x3000) && !removed.contains(0x9000));
        let served = Served {
            pages: 5,
            removals: 3,
            removed_bytes: 12288,
            prefetched: 0,
        };
        assert_eq!(
            served.to_string(),
            "served 5 pages; 3 removals of 12288 bytes"
        );
    }

    /// `ram` handed to the handler listening on `socket`; `None` (the test skipped, `dir`
    /// removed) on a host without userfaultfd.
    fn handed_over(ram: &GuestRam, socket: &Path, dir: &Path) -> Option<UffdBackend> {
        match serve_from_handler(ram, socket) {
            Ok(b) => Some(b),
            Err(Error::Uffd(e)) => {
                eprintln!("SKIPPED: {e}");
                // Let the handler thread's accept return.
                drop(UnixStream::connect(socket));
                let _ = std::fs::remove_dir_all(dir);
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_handler_counts_what_a_discard_removed_and_serves_zeros_there() {
        let size = 1u64 << 20;
        let dir = std::env::temp_dir().join(format!("petrel-uffd-served-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (socket, mem) = (dir.join("h.sock"), dir.join("mem"));
        std::fs::write(&mem, vec![0xa5u8; size as usize]).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let file = File::open(&mem).unwrap();
        let handler = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream, &file)
        });
        let ram = GuestRam::new(size).unwrap();
        let Some(backend) = handed_over(&ram, &socket, &dir) else {
            return;
        };
        let mut byte = [0u8; 1];
        ram.read(0x3000, &mut byte).unwrap();
        assert_eq!(byte[0], 0xa5);
        ram.discard(0x2000, 0x4000).unwrap();
        ram.read(0x3000, &mut byte).unwrap();
        assert_eq!(byte[0], 0, "a removed page came back with the file's bytes");
        ram.read(0x6000, &mut byte).unwrap();
        assert_eq!(byte[0], 0xa5);
        drop(backend);
        let served = handler.join().unwrap().unwrap();
        assert_eq!(
            served,
            Served {
                pages: 3,
                removals: 1,
                removed_bytes: 0x4000,
                prefetched: 0,
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_working_set_is_filled_ahead_of_the_guest() {
        let size = 1u64 << 20;
        let page = PAGE_SIZE as u64;
        let dir = std::env::temp_dir().join(format!("petrel-uffd-prefetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (socket, mem) = (dir.join("h.sock"), dir.join("mem"));
        let pattern = |p: u64| (p as u8) ^ 0x5a;
        let bytes: Vec<u8> = (0..size).map(|i| pattern(i / page)).collect();
        std::fs::write(&mem, bytes).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let file = File::open(&mem).unwrap();
        let run = |first, count| PageRun {
            first,
            count,
            written: false,
        };
        // 64 pages, then a run reaching past the end of guest memory (skipped there).
        let set = [run(0, 64), run(size / page - 2, 8)];
        let handler = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve_with_working_set(stream, &file, &set)
        });
        let ram = GuestRam::new(size).unwrap();
        let Some(backend) = handed_over(&ram, &socket, &dir) else {
            return;
        };
        // Wait until the handler filled the set, without touching guest memory.
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while ram
            .touched_pages(&pagemap)
            .unwrap()
            .iter()
            .map(|r| r.count)
            .sum::<u64>()
            < 66
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the set was not filled"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The set reads as the file; pages outside it fault in as before.
        for p in (0..64).chain(100..110).chain(size / page - 2..size / page) {
            let mut byte = [0u8; 1];
            ram.read(p * page + 9, &mut byte).unwrap();
            assert_eq!(byte[0], pattern(p), "page {p}");
        }
        drop(backend);
        let served = handler.join().unwrap().unwrap();
        assert_eq!((served.prefetched, served.pages), (66, 10), "{served:?}");
        assert!(
            served.to_string().ends_with("; prefetched 66 pages"),
            "{served}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nobody_listening_names_the_field() {
        let ram = GuestRam::new(2 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("petrel-no-uffd-{}.sock", std::process::id()));
        match serve_from_handler(&ram, &path) {
            Err(e @ Error::InvalidConfig { .. }) => {
                let text = e.to_string();
                assert!(
                    text.starts_with("invalid mem_backend.backend_path `"),
                    "{text}"
                );
                assert!(
                    text.contains("cannot connect to a page-fault handler there"),
                    "{text}"
                );
            }
            // A host without userfaultfd fails earlier, with its own error.
            Err(Error::Uffd(e)) => eprintln!("SKIPPED: {e}"),
            other => panic!("{other:?}"),
        }
    }
}
