//! Tests of the vsock device: the test plays the guest driver on hand-built rings and the host
//! side with real Unix sockets.

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
fn host_initiated_connection_carries_data_both_ways() {
    let mut r = rig();
    r.post_rx(8);
    // Bytes after the CONNECT line belong to the connection.
    let (mut host, req) = r.host_connect(1234, b"early");
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.dst_port, 1234);
    assert!(req.src_port >= 1 << 30, "{req:?}");
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
    let local = req.src_port;

    // The guest accepts; the host learns the local port.
    r.send(&from_guest(OP_RESPONSE, 1234, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}\n"));
    r.host_events();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (local, 1234));
    assert_eq!(pkts[0].1, b"early");

    // Host to guest.
    host.write_all(b"hello").unwrap();
    r.host_events();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"hello"[..]));

    // Guest to host.
    r.send(&from_guest(OP_RW, 1234, local), b"world");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    let s = r.stats();
    assert_eq!((s.bytes_to_guest, s.bytes_to_host), (10, 5));
    assert_eq!((s.connections_opened, s.connections_closed), (1, 0));
    assert_eq!(r.m.device().connections(), 1);

    // The host closes: the guest is told both directions are shut, and resets.
    drop(host);
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_BOTH));
    r.send(&from_guest(OP_RST, 1234, local), &[]);
    assert_eq!(r.m.device().connections(), 0);
    let s = r.stats();
    assert_eq!(
        (s.connections_closed, s.resets_received, s.resets_sent),
        (1, 1, 0)
    );
    // Nothing more for the guest.
    r.host_events();
    assert!(r.recv().is_empty());
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mut r = rig();
    r.post_rx(8);
    let listener = UnixListener::bind(port_path(&r.uds, 5000)).unwrap();
    r.send(&from_guest(OP_REQUEST, 777, 5000), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].op, OP_RESPONSE);
    assert_eq!((pkts[0].src_port, pkts[0].dst_port), (5000, 777));
    assert_eq!(pkts[0].buf_alloc, CONN_BUF_SIZE);

    r.send(&from_guest(OP_RW, 777, 5000), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    r.host_events();
    let pkts = r.recv();
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"pong"[..]));
    assert_eq!(
        pkts[0].0.fwd_cnt, 4,
        "the device's fwd_cnt counts what the host took"
    );

    // The guest closes: the device answers with a reset and the host sees EOF.
    let shut = Header {
        flags: SHUTDOWN_F_BOTH,
        ..from_guest(OP_SHUTDOWN, 777, 5000)
    };
    r.send(&shut, &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, 5000, 777)
    );
    assert!(at_eof(&mut host));
    let s = r.stats();
    assert_eq!((s.connections_opened, s.connections_closed), (1, 1));
    assert_eq!((s.bytes_to_guest, s.bytes_to_host), (4, 4));
}

#[test]
fn guest_rst_closes_the_host_stream_at_once() {
    let mut r = rig();
    r.post_rx(8);
    let (mut host, local) = r.established(80, 64 * 1024);
    r.send(&from_guest(OP_RST, 80, local), &[]);
    assert!(at_eof(&mut host));
    assert_eq!(r.m.device().connections(), 0);
    // No reset answers a reset.
    assert!(r.recv().is_empty());
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mut r = rig();
    r.post_rx(8);
    r.send(&from_guest(OP_REQUEST, 1000, 6000), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, 6000, 1000)
    );
    assert_eq!(r.stats().connect_failures, 1);
    assert_eq!(r.m.device().connections(), 0);
    // A stale socket file with nobody behind it fails the same way.
    drop(UnixListener::bind(port_path(&r.uds, 6001)).unwrap());
    r.send(&from_guest(OP_REQUEST, 1000, 6001), &[]);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().connect_failures, 2);
}

#[test]
fn packets_for_unknown_connections_are_reset() {
    let mut r = rig();
    r.post_rx(8);
    for op in [
        OP_RW,
        OP_SHUTDOWN,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        OP_RESPONSE,
    ] {
        r.send(
            &from_guest(op, 41, 42),
            if op == OP_RW { b"x" } else { b"" },
        );
    }
    // A reset for nothing is not answered.
    r.send(&from_guest(OP_RST, 41, 42), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 5, "{pkts:?}");
    for h in pkts {
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.type_),
            (OP_RST, 42, 41, TYPE_STREAM)
        );
    }
    let s = r.stats();
    assert_eq!(
        (s.unknown_connection, s.resets_sent, s.resets_received),
        (5, 5, 1)
    );
    assert_eq!((s.bytes_to_host, s.bad_packets), (0, 0));
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

#[test]
fn host_data_waits_for_guest_credit() {
    let mut r = rig();
    r.post_rx(16);
    let (mut host, local) = r.established(7, 10);
    host.write_all(b"0123456789abcdefghijKLMNO").unwrap();
    r.host_events();
    let pkts = r.recv();
    let ops: Vec<_> = pkts.iter().map(|(h, _)| h.op).collect();
    // Ten bytes of credit, then a request for more.
    assert_eq!(ops, [OP_RW, OP_CREDIT_REQUEST], "{pkts:?}");
    assert_eq!(pkts[0].1, b"0123456789");
    // Nothing more however often the device looks.
    r.host_events();
    assert!(r.recv().is_empty());

    let update = |fwd_cnt| Header {
        buf_alloc: 10,
        fwd_cnt,
        ..from_guest(OP_CREDIT_UPDATE, 7, local)
    };
    r.send(&update(10), &[]);
    let pkts = r.recv();
    assert_eq!(pkts[0].1, b"abcdefghij");
    assert_eq!(pkts[1].0.op, OP_CREDIT_REQUEST);
    r.send(&update(20), &[]);
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].1, b"KLMNO");
    assert_eq!(r.stats().bytes_to_guest, 25);
    // A guest claiming to have consumed more than it got gains nothing.
    host.write_all(b"zz").unwrap();
    r.send(&update(1000), &[]);
    r.host_events();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_CREDIT_REQUEST);
}

#[test]
fn credit_request_is_answered_and_credit_updates_are_sent() {
    let mut r = rig();
    r.post_rx(8);
    let listener = UnixListener::bind(port_path(&r.uds, 22)).unwrap();
    r.send(&from_guest(OP_REQUEST, 900, 22), &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(r.recv_headers()[0].op, OP_RESPONSE);
    r.send(&from_guest(OP_CREDIT_REQUEST, 900, 22), &[]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].buf_alloc, pkts[0].fwd_cnt),
        (OP_CREDIT_UPDATE, CONN_BUF_SIZE, 0)
    );
    // A little data: no update needed. Enough that the guest's view of our buffer runs low:
    // an update, unasked.
    r.send(&from_guest(OP_RW, 900, 22), &[1; 100]);
    assert!(r.recv().is_empty());
    r.send(&from_guest(OP_RW, 900, 22), &[2; 40 * 1024]);
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].fwd_cnt),
        (OP_CREDIT_UPDATE, 100 + 40 * 1024)
    );
    let mut got = vec![0u8; 100 + 40 * 1024];
    host.read_exact(&mut got).unwrap();
    assert!(got[..100].iter().all(|&b| b == 1) && got[100..].iter().all(|&b| b == 2));
}

#[test]
fn a_slow_host_gets_everything_within_the_credit_and_a_close_waits_for_it() {
    let mut r = rig();
    r.post_rx(32);
    let listener = UnixListener::bind(port_path(&r.uds, 9000)).unwrap();
    r.send(&from_guest(OP_REQUEST, 700, 9000), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    assert_eq!(r.recv_headers()[0].op, OP_RESPONSE);

    // The guest sends while it has credit; the host does not read, so the host socket fills,
    // then the device's buffer, until the guest has no credit left.
    let pattern = |i: usize| (i * 7 % 251) as u8;
    let (mut sent, mut fwd_seen, mut updates) = (0usize, 0u32, 0);
    loop {
        let credit = (CONN_BUF_SIZE - (sent as u32 - fwd_seen)) as usize;
        if credit == 0 {
            break;
        }
        let chunk: Vec<u8> = (sent..sent + credit.min(16 * 1024)).map(pattern).collect();
        r.send(&from_guest(OP_RW, 700, 9000), &chunk);
        sent += chunk.len();
        for h in r.recv_headers() {
            assert_eq!(h.op, OP_CREDIT_UPDATE);
            updates += 1;
            fwd_seen = h.fwd_cnt;
        }
        r.post_rx(32 - r.rx_posted.wrapping_sub(r.rx_seen));
        assert!(sent < 64 << 20, "the credit never ran out");
    }
    assert!(updates > 0);
    assert!(sent > CONN_BUF_SIZE as usize);
    assert_eq!(r.stats().credit_violations, 0);

    // The guest closes with data still in the device: no reset until the host has it all.
    let shut = Header {
        flags: SHUTDOWN_F_BOTH,
        ..from_guest(OP_SHUTDOWN, 700, 9000)
    };
    r.send(&shut, &[]);
    assert!(r.recv().is_empty());
    assert_eq!(r.m.device().connections(), 1);

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = [0u8; 32 * 1024];
        match host.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => r.host_events(),
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "host got {} of {sent}",
            got.len()
        );
    }
    assert_eq!(got.len(), sent);
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    let pkts = r.recv_headers();
    assert_eq!(pkts.last().unwrap().op, OP_RST, "{pkts:?}");
    assert_eq!(r.m.device().connections(), 0);
    assert_eq!(r.stats().bytes_to_host, sent as u64);
}

#[test]
fn a_guest_ignoring_credit_is_reset() {
    let mut r = rig();
    r.post_rx(32);
    let listener = UnixListener::bind(port_path(&r.uds, 9001)).unwrap();
    r.send(&from_guest(OP_REQUEST, 701, 9001), &[]);
    let (_host, _) = listener.accept().unwrap();
    r.recv();
    let chunk = vec![0x5a; MAX_PAYLOAD];
    let mut sent = 0;
    let reset = loop {
        r.send(&from_guest(OP_RW, 701, 9001), &chunk);
        sent += chunk.len();
        if let Some(h) = r.recv_headers().into_iter().find(|h| h.op == OP_RST) {
            break h;
        }
        r.post_rx(32 - r.rx_posted.wrapping_sub(r.rx_seen));
        assert!(sent < 64 << 20, "never reset");
    };
    assert_eq!((reset.src_port, reset.dst_port), (9001, 701));
    assert_eq!(r.stats().credit_violations, 1);
    assert_eq!(r.m.device().connections(), 0);
    // Later packets of that connection are answered with resets too.
    r.send(&from_guest(OP_RW, 701, 9001), b"x");
    assert_eq!(r.recv_headers()[0].op, OP_RST);
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut r = rig();
    r.post_rx(16);
    // Data before the guest answered the request.
    let (mut host, req) = r.host_connect(5, b"");
    r.send(&from_guest(OP_RW, 5, req.src_port), b"x");
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert!(at_eof(&mut host));
    // A second request, or a response, on a live connection.
    for op in [OP_REQUEST, OP_RESPONSE] {
        let (mut host, local) = r.established(5, 4096);
        r.send(&from_guest(op, 5, local), &[]);
        assert_eq!(r.recv_headers()[0].op, OP_RST);
        assert!(at_eof(&mut host));
    }
    // Data after the guest said it would send no more.
    let (mut host, local) = r.established(5, 4096);
    let shut = Header {
        flags: SHUTDOWN_F_SEND,
        ..from_guest(OP_SHUTDOWN, 5, local)
    };
    r.send(&shut, &[]);
    r.send(&from_guest(OP_RW, 5, local), b"late");
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert!(at_eof(&mut host));
    assert_eq!(r.stats().bad_packets, 4);
    assert_eq!(r.stats().bytes_to_host, 0);
    assert_eq!(r.m.device().connections(), 0);
}

#[test]
fn half_closes_both_ways() {
    let mut r = rig();
    r.post_rx(16);
    let (mut host, local) = r.established(8, 64 * 1024);
    // The host stops sending: the guest hears "no more data", and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_SEND));
    r.send(&from_guest(OP_RW, 8, local), b"reply");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    // The guest stops sending too: the host reads EOF; both directions are shut, so the
    // device closes and the guest resets.
    let shut = Header {
        flags: SHUTDOWN_F_SEND,
        ..from_guest(OP_SHUTDOWN, 8, local)
    };
    r.send(&shut, &[]);
    assert!(at_eof(&mut host));
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_BOTH));
    r.send(&from_guest(OP_RST, 8, local), &[]);
    assert_eq!(r.m.device().connections(), 0);
}

#[test]
fn guest_refusal_and_timeouts_close_the_host_stream() {
    let mut r = rig();
    r.post_rx(16);
    // The guest refuses: the host gets EOF and no OK line.
    let (mut host, req) = r.host_connect(99, b"");
    r.send(&from_guest(OP_RST, 99, req.src_port), &[]);
    assert!(at_eof(&mut host));
    assert_eq!(r.stats().refused_by_guest, 1);

    // The guest never answers: after CONNECT_TIMEOUT the host gets EOF and the guest a reset.
    let (mut host, req) = r.host_connect(99, b"");
    r.m.device_mut()
        .mux
        .expire(Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1));
    assert!(at_eof(&mut host));
    r.post_rx(1);
    let pkts = r.recv_headers();
    assert_eq!((pkts[0].op, pkts[0].src_port), (OP_RST, req.src_port));

    // The host closes and the guest never resets: the device does after SHUTDOWN_TIMEOUT.
    let (host, local) = r.established(99, 4096);
    drop(host);
    r.host_events();
    assert_eq!(r.recv_headers()[0].op, OP_SHUTDOWN);
    r.m.device_mut()
        .mux
        .expire(Instant::now() + SHUTDOWN_TIMEOUT + Duration::from_secs(1));
    r.post_rx(1);
    let pkts = r.recv_headers();
    assert_eq!((pkts[0].op, pkts[0].src_port), (OP_RST, local));
    assert_eq!(r.stats().timeouts, 2);
    assert_eq!(r.m.device().connections(), 0);
}

#[test]
fn the_timer_fires_through_the_event_source() {
    let mut r = rig();
    r.post_rx(4);
    let (mut host, _) = r.host_connect(99, b"");
    // Bring the deadline close instead of waiting five seconds.
    r.m.device_mut()
        .mux
        .move_deadlines(Instant::now() + Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(50));
    r.host_events();
    assert!(at_eof(&mut host));
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().timeouts, 1);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut r = rig();
    r.post_rx(4);
    for line in [&b"CONNECT x\n"[..], b"HELLO 5\n", b"CONNECT 99999999999\n"] {
        let mut host = UnixStream::connect(&r.uds).unwrap();
        host.write_all(line).unwrap();
        r.host_events();
        assert!(at_eof(&mut host), "{line:?}");
    }
    // Too long without a newline.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(&[b'7'; 100]).unwrap();
    r.host_events();
    assert!(at_eof(&mut host));
    // A client that hangs up mid-line is simply forgotten.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONN").unwrap();
    drop(host);
    r.host_events();
    assert_eq!(r.stats().bad_host_requests, 4);
    assert!(r.recv().is_empty());
    // A line sent in pieces is fine.
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNE").unwrap();
    r.host_events();
    host.write_all(b"CT 6\n").unwrap();
    r.host_events();
    assert_eq!(r.recv_headers()[0].dst_port, 6);
}

#[test]
fn connections_are_capped() {
    let mut r = rig();
    r.post_rx(8);
    r.m.device_mut().mux.max_connections = 2;
    let (_a, _) = r.host_connect(1, b"");
    let (_b, _) = r.host_connect(2, b"");
    let mut c = UnixStream::connect(&r.uds).unwrap();
    r.host_events();
    assert!(at_eof(&mut c));
    let _listener = UnixListener::bind(port_path(&r.uds, 3)).unwrap();
    r.send(&from_guest(OP_REQUEST, 10, 3), &[]);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().connections_refused, 2);
    assert_eq!(r.m.device().connections(), 2);
}

#[test]
fn replies_wait_for_receive_buffers_and_stall_the_transmit_queue() {
    let mut r = rig();
    // No receive buffers: a full ring of packets for nothing, each owed a reset.
    for i in 0..u32::from(QUEUE_SIZE) {
        r.publish_tx(&from_guest(OP_RW, i, 1), b"x");
    }
    // One wake-up takes a budget's worth; the device asks for the rest.
    r.m.process_queue_event(TX_QUEUE);
    assert_eq!(u32::from(r.tx.used_idx(&r.mem)), MAX_CHAINS_PER_WAKEUP);
    run_rearmed(&mut r.m);
    assert_eq!(r.tx.used_idx(&r.mem), QUEUE_SIZE);
    // More: the device stops taking them.
    for i in 0..10 {
        r.publish_tx(&from_guest(OP_RW, 1000 + i, 1), b"x");
    }
    r.m.process_queue_event(TX_QUEUE);
    assert_eq!(r.tx.used_idx(&r.mem), QUEUE_SIZE);
    assert_eq!(r.stats().tx_stalls, 1);
    assert!(r.m.is_running());
    // Receive buffers: the resets go out and the transmit queue moves again.
    let mut resets = Vec::new();
    while resets.len() < usize::from(QUEUE_SIZE) + 10 {
        r.post_rx(32);
        let got = r.recv_headers();
        assert!(!got.is_empty(), "stuck after {} resets", resets.len());
        resets.extend(got);
    }
    assert!(resets.iter().all(|h| h.op == OP_RST));
    assert_eq!(resets.last().unwrap().dst_port, 1009);
    assert_eq!(r.tx.used_idx(&r.mem), QUEUE_SIZE + 10);
    assert!(RST_QUEUE_CAP <= usize::from(QUEUE_SIZE));
}

#[test]
fn reset_closes_every_connection_and_keeps_listening() {
    let mut r = rig();
    r.post_rx(8);
    let (mut host, _) = r.established(1, 4096);
    wr(&mut r.m, 0x70, 0);
    assert!(at_eof(&mut host));
    assert_eq!(r.m.device().connections(), 0);
    assert!(r.uds.exists());
    // Brought up again on fresh rings, the device takes new connections.
    r.rx = TestQueue::new(0xa000, QUEUE_SIZE);
    r.tx = TestQueue::new(0xc000, QUEUE_SIZE);
    let ev = TestQueue::new(0xe000, QUEUE_SIZE);
    bring_up(&mut r.m, FEATURES, &[r.rx, r.tx, ev]);
    (r.rx_posted, r.rx_seen, r.tx_next) = (0, 0, 0);
    r.post_rx(4);
    let (_host, req) = r.host_connect(2, b"");
    assert_eq!(req.op, OP_REQUEST);
}

#[test]
fn host_connections_before_the_driver_is_ready_are_served_after() {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock");
    let mem = guest_mem();
    let mut m = VirtioMmio::new(Vsock::new(CID, uds.clone()).unwrap(), mem.clone()).unwrap();
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 4\n").unwrap();
    m.process_device_event(EVENT_TOKEN);
    assert_eq!(m.device().connections(), 1);
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x4000, QUEUE_SIZE);
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    rx.chain(&mem, 0, &[(RXB, 4096, true)]);
    rx.publish(&mem, 0);
    // The driver's initialization (as `bring_up`, without its opening reset, which would close
    // the connection: the guest is to forget every connection at a reset).
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    wr(&mut m, 0x70, s);
    wr(&mut m, 0x24, 1);
    wr(&mut m, 0x20, 1);
    wr(&mut m, 0x70, s | STATUS_FEATURES_OK);
    for (i, q) in [rx, tx, ev].iter().enumerate() {
        setup_queue(&mut m, i as u32, q);
    }
    wr(&mut m, 0x70, s | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(m.is_running());
    m.process_queue_event(RX_QUEUE);
    assert_eq!(rx.used_idx(&mem), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(RXB)).unwrap();
    let h = Header::from_bytes(&raw);
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 4));
}

#[test]
fn the_event_manager_drives_host_connections() {
    let r = rig();
    let Rig {
        m,
        mem,
        rx,
        uds,
        _dir,
        ..
    } = r;
    rx.chain(&mem, 0, &[(RXB, 4096, true)]);
    rx.publish(&mem, 0);
    let dev = Arc::new(Mutex::new(m));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 77\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.used_idx(&mem) == 0 && Instant::now() < deadline {
        em.run_with_timeout(100).unwrap();
    }
    assert_eq!(rx.used_idx(&mem), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(RXB)).unwrap();
    assert_eq!(Header::from_bytes(&raw).dst_port, 77);
    // Nothing left to do: the loop goes idle rather than spinning.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    let m = dev.lock().unwrap();
    assert_eq!(m.stats().event_registration_failures, 0);
    assert_eq!(m.interrupt().status(), INTERRUPT_VRING);
}

#[test]
fn guest_receive_shutdown_stops_host_data() {
    let mut r = rig();
    r.post_rx(8);
    let (mut host, local) = r.established(12, 64 * 1024);
    let shut = Header {
        flags: SHUTDOWN_F_RECEIVE,
        ..from_guest(OP_SHUTDOWN, 12, local)
    };
    r.send(&shut, &[]);
    // The host can no longer send; the guest gets nothing, and can still send itself.
    host.write_all(b"unwanted").unwrap_err();
    r.host_events();
    assert!(r.recv().is_empty());
    r.send(&from_guest(OP_RW, 12, local), b"still");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
    // When the host then closes, the guest is told and resets.
    drop(host);
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].op, pkts[0].flags), (OP_SHUTDOWN, SHUTDOWN_F_BOTH));
    assert_eq!(r.stats().bytes_to_guest, 0);
}

#[test]
fn a_host_client_giving_up_before_the_guest_answers_resets_the_request() {
    let mut r = rig();
    r.post_rx(8);
    let (host, req) = r.host_connect(31, b"");
    drop(host);
    r.host_events();
    let pkts = r.recv_headers();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, req.src_port, 31)
    );
    assert_eq!(r.m.device().connections(), 0);
    // The guest's late answer is for nothing now.
    r.send(&from_guest(OP_RESPONSE, 31, req.src_port), &[]);
    assert_eq!(r.recv_headers()[0].op, OP_RST);
    assert_eq!(r.stats().unknown_connection, 1);
}

/// Where the test driver puts its event buffers.
const EVB: u64 = 0xc_0000;

#[test]
fn a_restored_device_sends_the_guest_a_transport_reset() {
    let r = rig();
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    // The driver keeps event buffers posted (Linux fills the event queue at probe).
    r.mem.write_obj(0xffff_ffffu32, GuestAddress(EVB)).unwrap();
    let head = ev.chain(&r.mem, 0, &[(EVB, 4, true)]);
    ev.publish(&r.mem, head);
    let state = r.m.save_state();
    let json = serde_json::to_string(&state).unwrap();
    let back: crate::virtio::VirtioMmioState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    // The device did not touch the buffer before the snapshot.
    assert_eq!(ev.used_idx(&r.mem), 0);

    // A new process: the socket bound at another path (the user's override).
    let uds2 = r._dir.0.join("restored.sock");
    let dev = Vsock::new(CID, uds2.clone()).unwrap();
    let mut m = VirtioMmio::new(dev, r.mem.clone()).unwrap();
    m.restore_state(&back).unwrap();
    assert!(m.is_running());
    assert_eq!(m.device().uds_path(), uds2);
    run_rearmed(&mut m);
    assert_eq!(ev.used_idx(&r.mem), 1);
    assert_eq!(ev.used_elem(&r.mem, 0), (u32::from(head), 4));
    let id: u32 = r.mem.read_obj(GuestAddress(EVB)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    assert_eq!(m.interrupt_evt().unwrap().read().unwrap(), 1);
    assert_eq!(m.device().stats().transport_resets_sent, 1);

    // One reset only: the next event buffer waits.
    let head = ev.chain(&r.mem, 1, &[(EVB + 4, 4, true)]);
    ev.publish(&r.mem, head);
    m.process_queue_event(EVENT_QUEUE);
    assert_eq!(ev.used_idx(&r.mem), 1);
    // The restored device serves host clients at the new path.
    assert!(UnixStream::connect(&uds2).is_ok());
}

#[test]
fn the_reset_event_waits_for_an_event_buffer_and_a_wrong_cid_is_refused() {
    let r = rig();
    let ev = TestQueue::new(0x8000, QUEUE_SIZE);
    let state = r.m.save_state();

    let dev = Vsock::new(CID + 1, r._dir.0.join("other.sock")).unwrap();
    let mut m = VirtioMmio::new(dev, r.mem.clone()).unwrap();
    let err = m.restore_state(&state).unwrap_err();
    assert!(err.to_string().contains("guest CID is 3"), "{err}");
    assert!(!m.is_running());

    let dev = Vsock::new(CID, r._dir.0.join("restored.sock")).unwrap();
    let mut m = VirtioMmio::new(dev, r.mem.clone()).unwrap();
    m.restore_state(&state).unwrap();
    run_rearmed(&mut m);
    assert_eq!(m.device().stats().transport_resets_sent, 0);
    // The guest adds an event buffer and notifies.
    let head = ev.chain(&r.mem, 0, &[(EVB, 4, true)]);
    ev.publish(&r.mem, head);
    m.process_queue_event(EVENT_QUEUE);
    assert_eq!(ev.used_idx(&r.mem), 1);
    assert_eq!(m.device().stats().transport_resets_sent, 1);
}
