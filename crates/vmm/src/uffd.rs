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
//! [`Error::PageFaultHandlerGone`](crate::Error::PageFaultHandlerGone), since no page the guest
//! has not touched yet could be served any more.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_guest_mem::uffd::{Userfaultfd, FEATURE_EVENT_REMOVE};
use petrel_guest_mem::GuestRam;
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
