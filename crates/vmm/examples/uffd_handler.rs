//! A page-fault handler for the `Uffd` memory backend of `PUT /snapshot/load` (and of `petrel
//! restore --uffd-socket`): it serves a restored guest's pages from the snapshot's memory file.
//!
//! ```text
//! cargo run -p petrel-vmm --example uffd_handler -- SOCKET MEMFILE
//! ```
//!
//! It listens on SOCKET, takes one connection (Petrel's, or Firecracker's: the message is the
//! same), receives the userfaultfd and the memory layout, and then serves, one page per fault:
//! `UFFDIO_COPY` of the memory file's bytes, or `UFFDIO_ZEROPAGE` for a range the VMM gave back
//! to the host (`UFFD_EVENT_REMOVE`, a balloon inflating), whose old contents must not come
//! back. It ends, with status 0, when the VMM closes the connection (the VM ended). It
//! keeps the connection open while it serves: Petrel takes its hang-up as the handler's end.
//!
//! With no arguments it shows itself on a small memory it makes, playing the VMM's part in a
//! thread of its own (as `cargo xtask test` runs it).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use petrel_guest_mem::uffd::{Event, Userfaultfd};
use petrel_guest_mem::GuestRam;
use petrel_vmm::uffd::GuestRegionUffdMapping;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [socket, mem_file] => {
            let listener = UnixListener::bind(socket)
                .map_err(|e| format!("cannot listen on {socket}: {e}"))?;
            let file = File::open(mem_file).map_err(|e| format!("cannot open {mem_file}: {e}"))?;
            let (stream, _) = listener.accept()?;
            serve(stream, &file)
        }
        [] => demo(),
        _ => Err("usage: uffd_handler SOCKET MEMFILE".into()),
    }
}

/// The memory file, mapped read-only: the source of every copy.
struct Source {
    addr: *const u8,
    len: usize,
}

impl Source {
    fn map(file: &File) -> Result<Source, Error> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err("the memory file is empty".into());
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
            return Err(format!(
                "cannot map the memory file: {}",
                std::io::Error::last_os_error()
            )
            .into());
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

/// Receives the descriptor and the layout on `stream`, then serves faults until the VMM
/// closes the connection.
fn serve(stream: UnixStream, file: &File) -> Result<(), Error> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, fd) = stream.recv_with_fd(&mut buf)?;
    let fd = fd.ok_or("the VMM sent no userfaultfd")?;
    let uffd = Userfaultfd::from_fd(OwnedFd::from(fd));
    let regions: Vec<GuestRegionUffdMapping> = serde_json::from_slice(&buf[..n])
        .map_err(|e| format!("the VMM's layout is not the expected JSON: {e}"))?;
    let source = Source::map(file)?;
    let mut removed: Vec<(u64, u64)> = Vec::new();
    let mut served = 0u64;
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
            return Err(e.into());
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            eprintln!("uffd_handler: the VMM closed the connection; served {served} pages");
            return Ok(());
        }
        while let Some(event) = uffd.read_event()? {
            match event {
                Event::Pagefault { addr } => {
                    serve_page(&uffd, &regions, &source, &removed, addr)?;
                    served += 1;
                }
                Event::Remove { start, end } => removed.push((start, end)),
                Event::Other(_) => {}
            }
        }
    }
}

/// Fills the page at `addr`: zeros where the VMM removed it, else the memory file's bytes.
fn serve_page(
    uffd: &Userfaultfd,
    regions: &[GuestRegionUffdMapping],
    source: &Source,
    removed: &[(u64, u64)],
    addr: u64,
) -> Result<(), Error> {
    let r = regions
        .iter()
        .find(|r| addr >= r.base_host_virt_addr && addr - r.base_host_virt_addr < r.size as u64)
        .ok_or_else(|| format!("a fault at {addr:#x}, outside guest memory"))?;
    let page = r.page_size as u64;
    let start = addr & !(page - 1);
    let at = r.offset + (start - r.base_host_virt_addr);
    let result = if removed.iter().any(|&(s, e)| start >= s && start < e) {
        uffd.zero(start, page)
    } else if at + page <= source.len as u64 {
        // SAFETY: `at + page` is within the mapping of `source.len` bytes (checked above).
        uffd.copy(start, unsafe { source.addr.add(at as usize) }, page)
    } else {
        return Err(format!("a fault at {addr:#x}, past the end of the memory file").into());
    };
    match result {
        Ok(_) => Ok(()),
        // The VMM is changing its mappings (a removal is on its way): the fault comes back.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(()),
        // The VMM is gone.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(format!("cannot fill the page at {start:#x}: {e}").into()),
    }
}

/// The handler at work on 2 MiB of "guest memory" that a thread of this process registers and
/// reads, as a restored VM's vCPU would.
fn demo() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("petrel-uffd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("uffd.sock");
    let mem_path = dir.join("mem");
    let size = 2u64 << 20;
    let pattern = |i: u64| (i / 4096) as u8 ^ 0xa5;
    std::fs::write(&mem_path, (0..size).map(pattern).collect::<Vec<u8>>())?;
    let listener = UnixListener::bind(&socket)?;
    let vmm = std::thread::spawn({
        let socket = socket.clone();
        move || vmm_side(&socket, size)
    });
    let (stream, _) = listener.accept()?;
    let file = File::open(&mem_path)?;
    serve(stream, &file)?;
    let checked = vmm.join().map_err(|_| "the VMM thread panicked")??;
    println!("uffd_handler demo: served {checked} pages of a 2 MiB memory file on first touch, all correct");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The VMM's part: anonymous RAM handed to the handler as Petrel hands it, every page read
/// once and checked, then the connection closed.
fn vmm_side(socket: &Path, size: u64) -> Result<u64, String> {
    let ram = GuestRam::new(size).map_err(|e| e.to_string())?;
    let backend = petrel_vmm::uffd::serve_from_handler(&ram, socket).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1];
    for page in 0..size / 4096 {
        ram.read(page * 4096 + 7, &mut buf)
            .map_err(|e| e.to_string())?;
        if buf[0] != (page as u8 ^ 0xa5) {
            return Err(format!("page {page} has {:#x}", buf[0]));
        }
    }
    drop(backend);
    Ok(size / 4096)
}
