//! Tests of the vsock device: the test plays the guest driver on hand-built rings and the host
//! side with real Unix sockets.
//!
//! `connections.rs` has connections made, refused, closed and capped; `credit.rs` the flow
//! of data within the peer's credit; `lifecycle.rs` queues that run dry, resets, the event
//! loop and restored devices; this file the rig they share, the device itself and malformed
//! input.

mod connections;
mod credit;
mod lifecycle;

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::host::port_path;
use super::muxer::RST_QUEUE_CAP;
use super::packet::*;
use super::*;
use crate::virtio::testutil::*;
use crate::virtio::{
    VirtioMmio, INTERRUPT_VRING, MAX_CHAINS_PER_WAKEUP, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

const CID: u64 = 3;
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1;
/// Receive buffers: 64 slots of 4 KiB.
const RXB: u64 = 0x2_0000;
const RX_SLOT: u64 = 0x1000;
const RX_SLOTS: u16 = 64;
/// Transmit header, and payload after it.
const TXB: u64 = 0x6_0000;
const TX_PAYLOAD: u64 = TXB + 0x1000;

/// A directory of its own for each test's sockets, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "petrel-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Rig {
    m: VirtioMmio<Vsock>,
    mem: GuestMemoryMmap,
    rx: TestQueue,
    tx: TestQueue,
    rx_posted: u16,
    rx_seen: u16,
    tx_next: u16,
    uds: PathBuf,
    _dir: TempDir,
}

fn rig() -> Rig {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock");
    let dev = Vsock::new(CID, uds.clone()).unwrap();
    let mem = guest_mem();
    let mut m = VirtioMmio::new(dev, mem.clone()).unwrap();
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x4000, QUEUE_SIZE);
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    bring_up(&mut m, FEATURES, &[rx, tx, ev]);
    for q in 0..3 {
        m.process_queue_event(q);
    }
    Rig {
        m,
        mem,
        rx,
        tx,
        rx_posted: 0,
        rx_seen: 0,
        tx_next: 0,
        uds,
        _dir: dir,
    }
}

/// A header from the guest's port `src` to the host's port `dst`, advertising 64 KiB.
fn from_guest(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl Rig {
    /// Makes `n` more 4 KiB receive buffers available and notifies.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = u64::from(self.rx_posted % RX_SLOTS);
            // Descriptors 0..128 for these, 128.. for a test's custom chains.
            let desc = self.rx_posted % 128;
            self.rx.chain(
                &self.mem,
                desc,
                &[(RXB + slot * RX_SLOT, RX_SLOT as u32, true)],
            );
            self.rx.publish(&self.mem, desc);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.m.process_queue_event(RX_QUEUE);
    }

    /// Makes one receive chain of `bufs` available (its descriptors after the buffers in use).
    fn post_rx_chain(&mut self, bufs: &[Buf]) {
        let head = self.rx.chain(&self.mem, 128, bufs);
        self.rx.publish(&self.mem, head);
        self.rx_posted = self.rx_posted.wrapping_add(1);
        self.m.process_queue_event(RX_QUEUE);
    }

    /// The packets the device delivered since the last call, checked for consistency.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx(&self.mem) {
            let (id, len) = self.rx.used_elem(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            if id >= 128 {
                // A test's custom chain.
                out.push((Header::default(), vec![0; len as usize]));
                continue;
            }
            let addr = RXB + u64::from(id as u16 % RX_SLOTS) * RX_SLOT;
            let mut bytes = vec![0u8; len as usize];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            assert!(bytes.len() >= HDR_LEN, "short packet of {len} bytes");
            let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(hdr.len as usize, bytes.len() - HDR_LEN, "{hdr:?}");
            assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, CID), "{hdr:?}");
            out.push((hdr, bytes.split_off(HDR_LEN)));
        }
        out
    }

    /// Only the headers of [`recv`](Self::recv).
    fn recv_headers(&mut self) -> Vec<Header> {
        self.recv().into_iter().map(|(h, _)| h).collect()
    }

    /// Publishes a transmit chain of raw buffers without notifying.
    fn publish_tx_bufs(&mut self, bufs: &[Buf]) {
        if usize::from(self.tx_next) + bufs.len() > usize::from(QUEUE_SIZE) {
            self.tx_next = 0;
        }
        let head = self.tx.chain(&self.mem, self.tx_next, bufs);
        self.tx_next += bufs.len() as u16;
        self.tx.publish(&self.mem, head);
    }

    /// Publishes a packet (header and payload, `len` set here) without notifying.
    fn publish_tx(&mut self, hdr: &Header, payload: &[u8]) {
        let hdr = Header {
            len: payload.len() as u32,
            ..*hdr
        };
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(TXB))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(TX_PAYLOAD))
            .unwrap();
        if payload.is_empty() {
            self.publish_tx_bufs(&[(TXB, HDR_LEN as u32, false)]);
        } else {
            self.publish_tx_bufs(&[
                (TXB, HDR_LEN as u32, false),
                (TX_PAYLOAD, payload.len() as u32, false),
            ]);
        }
    }

    /// Transmits one packet and lets the device handle it.
    fn send(&mut self, hdr: &Header, payload: &[u8]) {
        self.publish_tx(hdr, payload);
        self.m.process_queue_event(TX_QUEUE);
    }

    /// Lets the device look at its host sockets.
    fn host_events(&mut self) {
        self.m.process_device_event(EVENT_TOKEN);
    }

    fn stats(&self) -> VsockStats {
        self.m.device().stats()
    }

    /// A host client that asked for guest port `port` and the OP_REQUEST the guest got.
    fn host_connect(&mut self, port: u32, extra: &[u8]) -> (UnixStream, Header) {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        host.write_all(extra).unwrap();
        self.host_events();
        let pkts = self.recv_headers();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        (host, pkts[0])
    }

    /// A host-initiated connection to guest port `port`, accepted by the guest with credit
    /// `buf_alloc`; returns the host stream and the device's local port.
    fn established(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let (mut host, req) = self.host_connect(port, b"");
        let resp = Header {
            buf_alloc,
            ..from_guest(OP_RESPONSE, port, req.src_port)
        };
        self.send(&resp, &[]);
        assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
        (host, req.src_port)
    }
}

/// Reads one line from `s`, byte by byte.
fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b).unwrap() {
            0 => break,
            _ => line.push(b[0]),
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether `s` is at EOF (reads nothing within the timeout otherwise: a failure).
fn at_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match s.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        // Closed with bytes of ours unread (a Unix socket reports that as a reset).
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn device_type_queues_and_config_space_cid() {
    let mut r = rig();
    assert_eq!(rd(&mut r.m, 0x008), TYPE_VSOCK);
    assert_eq!(read_config(&mut r.m, 0, 10), [3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut word = [0u8; 8];
    crate::BusDevice::read(&mut r.m, 0x100, &mut word);
    assert_eq!(u64::from_le_bytes(word), CID);
    for q in 0..3 {
        wr(&mut r.m, 0x30, q);
        assert_eq!(rd(&mut r.m, 0x34), u32::from(QUEUE_SIZE));
    }
    wr(&mut r.m, 0x30, 3);
    assert_eq!(rd(&mut r.m, 0x34), 0);
    assert_eq!(r.m.device().features(), FEATURES);
    assert!(r.m.is_running());
    let dev = r.m.device();
    assert_eq!((dev.guest_cid(), dev.uds_path()), (CID, r.uds.as_path()));
    assert_eq!(dev.event_sources().len(), 1);
    assert!(dev.event_sources()[0].edge_triggered);
    let names: Vec<_> = dev.counters().iter().map(|(n, _)| *n).collect();
    assert!(names.contains(&"bytes_to_guest") && names.contains(&"resets_sent"));
}

#[test]
fn new_refuses_reserved_cids_and_taken_paths() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32, u64::MAX] {
        let err = Vsock::<GuestMemoryMmap>::new(cid, path.clone()).unwrap_err();
        assert!(matches!(err, Error::VsockCid { cid: c } if c == cid));
        assert!(err.to_string().contains(&cid.to_string()), "{err}");
        assert!(!path.exists());
    }
    // Something is there already: refused, and left alone.
    std::fs::write(&path, b"keep").unwrap();
    let err = Vsock::<GuestMemoryMmap>::new(3, path.clone()).unwrap_err();
    assert!(matches!(err, Error::VsockPathExists { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    std::fs::remove_file(&path).unwrap();
    // A directory that does not exist.
    let missing = dir.0.join("no/such/dir/v.sock");
    let err = Vsock::<GuestMemoryMmap>::new(3, missing.clone()).unwrap_err();
    assert!(matches!(err, Error::VsockBind { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    // The largest valid CID; the socket goes when the device does.
    let dev = Vsock::<GuestMemoryMmap>::new(u64::from(u32::MAX) - 1, path.clone()).unwrap();
    assert!(path.exists());
    drop(dev);
    assert!(!path.exists());
}

#[test]
fn malformed_packets_are_counted_and_never_fatal() {
    let mut r = rig();
    r.post_rx(8);
    let good = from_guest(OP_RW, 1, 2);
    r.mem
        .write_slice(&Header { len: 100, ..good }.to_bytes(), GuestAddress(TXB))
        .unwrap();
    // Shorter than a header; payload shorter than `len`; `len` past the largest payload
    // (with a chain that holds it); a device-writable buffer; a buffer past the end of RAM.
    r.publish_tx_bufs(&[(TXB, 20, false)]);
    r.publish_tx_bufs(&[(TXB, HDR_LEN as u32, false), (TX_PAYLOAD, 10, false)]);
    r.mem
        .write_slice(
            &Header {
                len: MAX_PAYLOAD as u32 + 1,
                ..good
            }
            .to_bytes(),
            GuestAddress(TXB + 0x100),
        )
        .unwrap();
    r.publish_tx_bufs(&[
        (TXB + 0x100, HDR_LEN as u32, false),
        (TX_PAYLOAD, MAX_PAYLOAD as u32 + 1, false),
    ]);
    r.publish_tx_bufs(&[(TXB, HDR_LEN as u32, false), (TX_PAYLOAD, 100, true)]);
    r.publish_tx_bufs(&[(TXB, HDR_LEN as u32, false), (0x10_0000 - 50, 100, false)]);
    r.m.process_queue_event(TX_QUEUE);
    assert_eq!(r.stats().bad_packets, 5);
    assert!(r.recv().is_empty());

    // Spoofed source CID, or a destination other than the host: dropped without an answer.
    r.send(&Header { src_cid: 9, ..good }, b"x");
    r.send(&Header { dst_cid: 1, ..good }, b"x");
    r.send(
        &Header {
            dst_cid: CID,
            ..good
        },
        b"x",
    );
    assert!(r.recv().is_empty());
    assert_eq!(r.stats().bad_packets, 8);

    // Wrong socket type, unknown operations: answered with a reset.
    r.send(
        &Header {
            type_: TYPE_SEQPACKET,
            ..from_guest(OP_REQUEST, 1, 2)
        },
        &[],
    );
    r.send(&from_guest(OP_INVALID, 1, 2), &[]);
    r.send(&from_guest(99, 1, 2), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 3, "{pkts:?}");
    assert!(pkts.iter().all(|h| h.op == OP_RST));
    assert_eq!(pkts[0].type_, TYPE_SEQPACKET);
    assert_eq!(r.stats().bad_packets, 11);

    // Every chain came back; the device still works.
    assert_eq!(r.tx.used_idx(&r.mem), 11);
    assert!(r.m.is_running());
    assert_eq!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.stats().bytes_to_host, 0);
}

#[test]
fn bad_receive_chains_are_returned_unused() {
    let mut r = rig();
    // Owe the guest a reset, then offer it a read-only chain, a chain too short for a header,
    // and a chain past the end of RAM.
    r.send(&from_guest(OP_RW, 1, 2), b"x");
    r.post_rx_chain(&[(RXB, 4096, false)]);
    r.post_rx_chain(&[(RXB, 20, true)]);
    r.post_rx_chain(&[(0x10_0000 - 20, 64, true)]);
    assert_eq!(r.stats().rx_bad_chains, 3);
    let used: Vec<_> = (0..3).map(|i| r.rx.used_elem(&r.mem, i)).collect();
    assert_eq!(used, [(128, 0); 3]);
    r.rx_seen = 3;
    // A good chain gets the reset.
    r.post_rx(1);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert!(r.m.is_running());
}

#[test]
fn broken_transmit_chain_needs_reset() {
    let mut r = rig();
    r.tx.set_desc(&r.mem, 0, TXB, HDR_LEN as u32, F_NEXT, 0);
    r.tx.publish(&r.mem, 0);
    r.m.process_queue_event(TX_QUEUE);
    assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // The host side survives the guest's fault and a reset.
    wr(&mut r.m, 0x70, 0);
    assert!(r.uds.exists());
}
