//! A page-fault handler for the `Uffd` memory backend of `PUT /snapshot/load` (and of `petrel
//! restore --uffd-socket`): it serves a restored guest's pages from the snapshot's memory file.
//!
//! ```text
//! cargo run -p petrel-vmm --example uffd_handler -- SOCKET MEMFILE [STATE]
//! ```
//!
//! It listens on SOCKET, takes one connection (Petrel's, or Firecracker's: the message is the
//! same), receives the userfaultfd and the memory layout, and then serves, one page per fault:
//! `UFFDIO_COPY` of the memory file's bytes, or `UFFDIO_ZEROPAGE` for a range the VMM gave back
//! to the host (`UFFD_EVENT_REMOVE`, a balloon inflating), whose old contents must not come
//! back. It ends, with status 0, when the VMM closes the connection (the VM ended), saying on
//! stderr `uffd_handler: the VMM closed the connection; served N pages; M removals of B
//! bytes` (the removals it read, and the bytes they covered). It keeps the connection open
//! while it serves: Petrel takes its hang-up as the handler's end.
//!
//! Given the snapshot's state file STATE, it first fills the pages of the snapshot's working
//! set (`STATE.working-set`, which `petrel restore --working-set record` writes; see
//! `petrel_vmm::working_set`) ahead of the guest, serving faults between chunks, and its closing
//! line adds `; prefetched N pages`. A missing working set is no error; an invalid one is
//! ignored with a line that says why.
//!
//! With no arguments it shows itself on a small memory it makes, playing the VMM's part in a
//! thread of its own (as `cargo xtask test` runs it).

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::Path;

use petrel_guest_mem::GuestRam;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [socket, mem_file, state @ ..] if state.len() <= 1 => {
            let listener = UnixListener::bind(socket)
                .map_err(|e| format!("cannot listen on {socket}: {e}"))?;
            let file = File::open(mem_file).map_err(|e| format!("cannot open {mem_file}: {e}"))?;
            let working_set = match state.first() {
                Some(state) => working_set(Path::new(state), file.metadata()?.len()),
                None => Vec::new(),
            };
            let (stream, _) = listener.accept()?;
            let served = petrel_vmm::uffd::serve_with_working_set(stream, &file, &working_set)?;
            eprintln!("uffd_handler: the VMM closed the connection; {served}");
            Ok(())
        }
        [] => demo(),
        _ => Err("usage: uffd_handler SOCKET MEMFILE [STATE]".into()),
    }
}

/// The working set beside the state file `state` for a memory file of `mem_size` bytes, or
/// none (saying why when there is a file that cannot be used).
fn working_set(state: &Path, mem_size: u64) -> Vec<petrel_guest_mem::PageRun> {
    match petrel_vmm::working_set::read_beside(state, mem_size) {
        Ok(Some(runs)) => {
            let pages: u64 = runs.iter().map(|r| r.count).sum();
            eprintln!(
                "uffd_handler: prefetching the working set of {pages} pages from {}",
                petrel_vmm::working_set::file_for(state).display()
            );
            runs
        }
        Ok(None) => Vec::new(),
        Err(why) => {
            eprintln!(
                "uffd_handler: ignored the working set of {}: {why}",
                state.display()
            );
            Vec::new()
        }
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
    petrel_vmm::uffd::serve_pages(stream, &file)?;
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
