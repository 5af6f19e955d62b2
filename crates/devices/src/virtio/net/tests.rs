//! virtio-net with a fake tap (a datagram socket): configuration and queues, transmit and
//! receive chains (good, bad, too small), the rate limiters, reset, the event loop's watch on
//! the tap, real taps, and a restored interface.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::testutil::*;
use crate::virtio::{VirtioMmio, INTERRUPT_VRING, STATUS_DEVICE_NEEDS_RESET};

const MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC;
const RXB: u64 = 0x4_0000;
const TXB: u64 = 0x8_0000;

struct Rig {
    m: VirtioMmio<Net>,
    mem: GuestMemoryMmap,
    rx: TestQueue,
    tx: TestQueue,
    peer: UnixDatagram,
    rx_next: u16,
    tx_next: u16,
}

fn rig() -> Rig {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = File::from(OwnedFd::from(ours));
    let net = Net::from_tap_file(tap, "test0".into(), MAC).unwrap();
    let mem = guest_mem();
    let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x3000, QUEUE_SIZE);
    bring_up(&mut m, FEATURES, &[rx, tx]);
    m.process_queue_event(0);
    m.process_queue_event(1);
    Rig {
        m,
        mem,
        rx,
        tx,
        peer,
        rx_next: 0,
        tx_next: 0,
    }
}

/// A frame with a virtio-net header (all zero but `flags`) and `payload`.
fn frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f[0] = flags;
    f.extend_from_slice(payload);
    f
}

impl Rig {
    /// Adds one receive chain of `bufs`, and notifies unless `quiet`.
    fn add_rx(&mut self, bufs: &[Buf], notify: bool) -> u16 {
        let head = self.rx.chain(&self.mem, self.rx_next, bufs);
        self.rx_next += bufs.len() as u16;
        self.rx.publish(&self.mem, head);
        if notify {
            self.m.process_queue_event(RX_QUEUE);
        }
        head
    }

    /// Sends `bytes` split over `splits` descriptors from the guest.
    fn send(&mut self, bytes: &[u8], bufs: &[Buf]) {
        self.mem.write_slice(bytes, GuestAddress(TXB)).unwrap();
        let head = self.tx.chain(&self.mem, self.tx_next, bufs);
        self.tx_next += bufs.len() as u16;
        self.tx.publish(&self.mem, head);
        self.m.process_queue_event(TX_QUEUE);
    }

    fn tap_readable(&mut self) {
        self.m.process_device_event(TAP_TOKEN);
    }

    fn peer_recv(&self) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 70000];
        let n = self.peer.recv(&mut b).ok()?;
        b.truncate(n);
        Some(b)
    }

    fn rx_used(&self) -> Vec<(u32, u32)> {
        (0..self.rx.used_idx(&self.mem))
            .map(|i| self.rx.used_elem(&self.mem, i))
            .collect()
    }

    fn read_guest(&self, addr: u64, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn config_features_and_queues() {
    let mut r = rig();
    assert_eq!(read_config(&mut r.m, 0, 8), [6, 0, 0xac, 0x10, 0, 2, 0, 0]);
    assert_eq!(r.m.device().features(), FEATURES);
    assert_eq!(rd(&mut r.m, 0x008), 1);
    for q in 0..2 {
        wr(&mut r.m, 0x30, q);
        assert_eq!(rd(&mut r.m, 0x34), 256);
    }
    wr(&mut r.m, 0x30, 2);
    assert_eq!(rd(&mut r.m, 0x34), 0);
    assert_eq!(r.m.device().mac(), MAC);
    assert_eq!(r.m.device().tap_name(), "test0");
}

#[test]
fn transmit_gathers_the_chain_into_one_frame() {
    let mut r = rig();
    let f = frame(0, b"hello, world");
    // Header split from the payload, and the payload split too.
    r.send(
        &f,
        &[(TXB, 12, false), (TXB + 12, 5, false), (TXB + 17, 7, false)],
    );
    assert_eq!(r.peer_recv().unwrap(), f);
    assert_eq!(r.tx.used_elem(&r.mem, 0), (0, 0));
    assert_eq!(r.m.interrupt().status(), INTERRUPT_VRING);
    let s = r.m.device().stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (1, f.len() as u64));
}

#[test]
fn transmit_header_is_zeroed() {
    // NEEDS_CSUM and a GSO type the guest never negotiated do not reach the host.
    let mut r = rig();
    let mut f = frame(1, &[0xab; 60]);
    f[1] = 4; // VIRTIO_NET_HDR_GSO_TCPV6
    f[4..6].copy_from_slice(&1400u16.to_le_bytes());
    r.send(&f, &[(TXB, f.len() as u32, false)]);
    let got = r.peer_recv().unwrap();
    assert_eq!(&got[..NET_HDR_LEN], &[0; NET_HDR_LEN]);
    assert_eq!(&got[NET_HDR_LEN..], &f[NET_HDR_LEN..]);
}

#[test]
fn bad_transmit_chains_are_dropped() {
    let mut r = rig();
    let f = frame(0, &[1; 50]);
    let cases: &[&[Buf]] = &[
        // A device-writable buffer in a transmit chain.
        &[(TXB, 12, false), (TXB + 12, 50, true)],
        // Shorter than the header.
        &[(TXB, 11, false)],
        // Outside guest RAM.
        &[(TXB, 12, false), (0xf_fff0, 50, false)],
        // Longer than the largest frame.
        &[(TXB, 12, false), (TXB, 65551, false)],
    ];
    for (i, bufs) in cases.iter().enumerate() {
        r.send(&f, bufs);
        assert_eq!(r.tx.used_idx(&r.mem), i as u16 + 1, "{bufs:?}");
        assert_eq!(r.peer_recv(), None, "{bufs:?}");
    }
    assert_eq!(r.m.device().stats().tx_bad_chains, 4);
    assert!(r.m.is_running());
    // A good one still goes through.
    r.send(&f, &[(TXB, f.len() as u32, false)]);
    assert_eq!(r.peer_recv().unwrap(), f);
}

/// One bucket of `size` tokens refilled over 100 s: in a test, what is taken is gone.
fn slow(size: u64) -> Option<crate::rate_limiter::TokenBucketConfig> {
    Some(crate::rate_limiter::TokenBucketConfig {
        size,
        one_time_burst: 0,
        refill_time_ms: 100_000,
    })
}

#[test]
fn transmit_waits_for_the_tx_limiter() {
    let mut r = rig();
    let none = RateLimiterConfig::default();
    let tx = RateLimiterConfig {
        bandwidth: None,
        ops: slow(1),
    };
    r.m.device_as_mut::<Net>()
        .unwrap()
        .set_rate_limiters(&none, &tx);
    assert_eq!(r.m.device().rate_limiters(), (none, tx));
    let f = frame(0, &[1; 50]);
    r.send(&f, &[(TXB, f.len() as u32, false)]);
    r.send(&f, &[(TXB, f.len() as u32, false)]);
    // One frame out; the second chain waits in the ring.
    assert_eq!(r.peer_recv().unwrap(), f);
    assert_eq!(r.peer_recv(), None);
    assert_eq!(r.tx.used_idx(&r.mem), 1);
    let s = r.m.device().stats();
    assert_eq!((s.tx_frames, s.tx_throttled, s.rx_throttled), (1, 1, 0));
    // Still waiting on a new notification.
    r.m.process_queue_event(TX_QUEUE);
    assert_eq!(r.tx.used_idx(&r.mem), 1);
    // The host lifts the limit; the waiting direction is woken through its timer.
    r.m.device_mut().set_rate_limiters(
        &none,
        &RateLimiterConfig {
            bandwidth: None,
            ops: Some(Default::default()),
        },
    );
    r.m.process_device_event(TX_TIMER_TOKEN);
    assert_eq!(r.peer_recv().unwrap(), f);
    assert_eq!(r.tx.used_idx(&r.mem), 2);
    assert_eq!(r.m.device().rate_limiters(), (none, none));
    assert!(r.m.device().counters().contains(&("tx_throttled", 1)));
}

#[test]
fn received_frames_wait_for_the_rx_limiter() {
    let mut r = rig();
    let rx = RateLimiterConfig {
        bandwidth: slow(100),
        ops: None,
    };
    r.m.device_mut()
        .set_rate_limiters(&rx, &RateLimiterConfig::default());
    for i in 0..2 {
        r.add_rx(&[(RXB + 0x1000 * i, 2048, true)], true);
    }
    let (a, b) = (frame(0, &[0xa; 48]), frame(0, &[0xb; 48]));
    r.peer.send(&a).unwrap();
    r.peer.send(&b).unwrap();
    r.tap_readable();
    // 60 bytes fit in the bucket of 100, the next 60 do not: the frame is kept.
    assert_eq!(r.rx_used(), [(0, 60)]);
    assert_eq!(r.m.device().stats().rx_throttled, 1);
    assert_eq!(r.m.device().stats().rx_frames, 1);
    // The tap firing again changes nothing while the device waits.
    r.tap_readable();
    assert_eq!(r.rx_used().len(), 1);
    // A PATCH that gives the rx bandwidth a new, full bucket; tx not given, kept.
    r.m.device_mut().set_rate_limiters(
        &RateLimiterConfig {
            bandwidth: slow(1000),
            ops: None,
        },
        &RateLimiterConfig::default(),
    );
    r.m.process_device_event(RX_TIMER_TOKEN);
    assert_eq!(r.rx_used(), [(0, 60), (1, 60)]);
    assert_eq!(&r.read_guest(RXB + 0x1000 + 12, 48), &[0xb; 48]);
    assert_eq!(r.m.device().stats().rx_frames, 2);
}

#[test]
fn receive_into_the_next_chain() {
    let mut r = rig();
    let intr = r.m.interrupt_evt().unwrap().try_clone().unwrap();
    let _ = intr.read();
    let head = r.add_rx(&[(RXB, 12, true), (RXB + 0x1000, 1514, true)], true);
    let f = frame(0, &[0x42; 100]);
    r.peer.send(&f).unwrap();
    r.tap_readable();
    assert_eq!(r.rx_used(), [(u32::from(head), f.len() as u32)]);
    // num_buffers is set to 1.
    let mut want_hdr = f[..NET_HDR_LEN].to_vec();
    want_hdr[10] = 1;
    assert_eq!(r.read_guest(RXB, 12), want_hdr);
    assert_eq!(r.read_guest(RXB + 0x1000, 100), [0x42; 100]);
    assert_eq!(intr.read().unwrap(), 1);
    let s = r.m.device().stats();
    assert_eq!((s.rx_frames, s.rx_bytes), (1, f.len() as u64));
}

#[test]
fn frames_wait_for_buffers_and_are_never_dropped() {
    let mut r = rig();
    for i in 0..3u8 {
        r.peer.send(&frame(0, &[i; 20])).unwrap();
    }
    // No receive buffers: the first frame is read and kept, the others stay in the tap.
    r.tap_readable();
    r.tap_readable();
    assert!(r.rx_used().is_empty());
    assert_eq!(r.m.device().stats().rx_deferred, 2);
    // One buffer at a time, each notification delivers the next frame, in order.
    for i in 0..3u8 {
        r.add_rx(&[(RXB + 0x1000 * u64::from(i), 2048, true)], true);
        assert_eq!(r.rx_used().len(), usize::from(i) + 1);
        assert_eq!(r.read_guest(RXB + 0x1000 * u64::from(i) + 12, 20), [i; 20]);
    }
    assert_eq!(r.m.device().stats().rx_frames, 3);
}

#[test]
fn frame_too_large_for_the_chain_is_dropped_and_the_chain_kept() {
    let mut r = rig();
    let head = r.add_rx(&[(RXB, 64, true)], true);
    r.peer.send(&frame(0, &[9; 100])).unwrap();
    r.peer.send(&frame(0, &[8; 10])).unwrap();
    r.tap_readable();
    assert_eq!(r.rx_used(), [(u32::from(head), 22)]);
    assert_eq!(r.read_guest(RXB + 12, 10), [8; 10]);
    assert_eq!(r.m.device().stats().rx_too_large, 1);
}

#[test]
fn bad_receive_chains_are_returned_unused() {
    let mut r = rig();
    // Device-readable; outside guest RAM; then a good one.
    let a = r.add_rx(&[(RXB, 2048, false)], false);
    let b = r.add_rx(&[(RXB, 12, true), (0xf_ff00, 2048, true)], false);
    let c = r.add_rx(&[(RXB + 0x1000, 2048, true)], false);
    let f = frame(0, &[5; 30]);
    r.peer.send(&f).unwrap();
    r.peer.send(&[1, 2, 3]).unwrap(); // shorter than a header
    r.tap_readable();
    assert_eq!(
        r.rx_used(),
        [
            (u32::from(a), 0),
            (u32::from(b), 0),
            (u32::from(c), f.len() as u32)
        ]
    );
    assert_eq!(r.read_guest(RXB, 4), [0; 4]);
    let s = r.m.device().stats();
    assert_eq!((s.rx_bad_chains, s.rx_bad_frames), (2, 1));
    assert!(r.m.is_running());
}

#[test]
fn broken_chains_need_reset() {
    let mut r = rig();
    r.tx.set_desc(&r.mem, 0, TXB, 64, F_NEXT, 0);
    r.tx.publish(&r.mem, 0);
    r.m.process_queue_event(TX_QUEUE);
    assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.peer_recv(), None);

    let mut r = rig();
    r.rx.set_desc(&r.mem, 0, RXB, 64, F_WRITE | F_NEXT, 300);
    r.rx.publish(&r.mem, 0);
    r.peer.send(&frame(0, &[1; 10])).unwrap();
    r.tap_readable();
    assert_ne!(r.m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // Stopped: tap events no longer reach the device.
    r.peer.send(&frame(0, &[2; 10])).unwrap();
    r.tap_readable();
    assert_eq!(r.m.device().stats().rx_deferred, 0);
}

#[test]
fn a_frame_read_before_reset_is_delivered_after() {
    let mut r = rig();
    r.peer.send(&frame(0, &[3; 40])).unwrap();
    r.tap_readable();
    assert_eq!(r.m.device().stats().rx_deferred, 1);
    wr(&mut r.m, 0x70, 0);
    let rx = TestQueue::new(0x6000, QUEUE_SIZE);
    bring_up(&mut r.m, FEATURES, &[rx, r.tx]);
    let head = rx.chain(&r.mem, 0, &[(RXB, 2048, true)]);
    rx.publish(&r.mem, head);
    r.m.process_queue_event(RX_QUEUE);
    assert_eq!(rx.used_elem(&r.mem, 0), (0, 52));
    assert_eq!(r.read_guest(RXB + 12, 40), [3; 40]);
}

#[test]
fn the_tap_is_watched_edge_triggered_by_the_event_loop() {
    let r = rig();
    let Rig {
        m, mem, rx, peer, ..
    } = r;
    assert!(m.device().event_sources()[0].edge_triggered);
    let dev = Arc::new(Mutex::new(m));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    let head = rx.chain(&mem, 0, &[(RXB, 2048, true)]);
    rx.publish(&mem, head);
    dev.lock().unwrap().process_queue_event(RX_QUEUE);
    peer.send(&frame(0, b"ping")).unwrap();
    let mut spins = 0;
    while rx.used_idx(&mem) == 0 && spins < 50 {
        em.run_with_timeout(100).unwrap();
        spins += 1;
    }
    assert_eq!(rx.used_elem(&mem, 0), (0, 16));
    assert_eq!(dev.lock().unwrap().stats().event_registration_failures, 0);
}

/// A connected pair of `SOCK_SEQPACKET` sockets: one frame per read and write, like a
/// tap, without a datagram socket's small queue limit (`net.unix.max_dgram_qlen`).
fn seqpacket_pair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which has room for them; the
    // result is checked.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

#[test]
fn a_tap_flood_is_delivered_64_frames_per_round() {
    let (ours, mut peer) = seqpacket_pair();
    let net = Net::from_tap_file(ours, "test0".into(), MAC).unwrap();
    let mem = guest_mem();
    let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x3000, QUEUE_SIZE);
    bring_up(&mut m, FEATURES, &[rx, tx]);
    for evt in m.queue_events() {
        let _ = evt.read();
    }
    // 100 receive buffers, all at one address (only the lengths are checked).
    for i in 0..100u16 {
        let head = rx.chain(&mem, i, &[(RXB, 2048, true)]);
        rx.publish(&mem, head);
    }
    // 100 frames, frame `i` 32 + i bytes long, waiting in the "tap".
    petrel_util::set_nonblocking(&peer).unwrap();
    for i in 0..100u8 {
        peer.write_all(&frame(0, &vec![i; 20 + usize::from(i)]))
            .unwrap();
    }
    let dev = Arc::new(Mutex::new(m));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    // The tap is reported once (edge-triggered); the rest comes through the re-armed
    // receive queue, a budget per round.
    let mut rounds = Vec::new();
    let mut used = 0;
    while used < 100 && rounds.len() < 100 {
        em.run_with_timeout(1000).unwrap();
        let now = rx.used_idx(&mem);
        assert!(now >= used);
        rounds.push(now - used);
        used = now;
    }
    assert_eq!(rounds, [64, 36]);
    // In order, each once.
    for k in 0..100u16 {
        assert_eq!(rx.used_elem(&mem, k), (u32::from(k), 32 + u32::from(k)));
    }
    let m = dev.lock().unwrap();
    assert_eq!((m.device().stats().rx_frames, m.stats().rearms), (100, 1));
}

#[test]
fn open_tap_names_the_tap_in_errors() {
    let err = Net::<GuestMemoryMmap>::open_tap("petrel-nope0", MAC).unwrap_err();
    assert!(matches!(err, Error::TapNotFound { .. }), "{err}");
    assert!(err.to_string().contains("petrel-nope0"), "{err}");
    for bad in ["", "a/b", "sixteen-chars-xx", "..", "a\0b"] {
        let err = Net::<GuestMemoryMmap>::open_tap(bad, MAC).unwrap_err();
        assert!(matches!(err, Error::TapName { .. }), "{bad:?}: {err}");
    }
}

/// Opens a real tap when `PETREL_TEST_TAP` names one (e.g. after
/// `ip tuntap add dev ptap0 mode tap`); skipped otherwise. With `PETREL_TEST_TAP_IP` set
/// to the tap's IPv4 address (the tap up), the "guest" asks for its MAC with ARP and
/// expects the host's answer: the 12-byte header works both ways.
#[test]
fn open_a_real_tap() {
    let Ok(name) = std::env::var("PETREL_TEST_TAP") else {
        eprintln!("skipped: PETREL_TEST_TAP is not set");
        return;
    };
    let net = Net::<GuestMemoryMmap>::open_tap(&name, MAC).unwrap();
    assert_eq!(net.tap_name(), name);
    let Ok(ip) = std::env::var("PETREL_TEST_TAP_IP") else {
        return;
    };
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let mem = guest_mem();
    let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x3000, QUEUE_SIZE);
    bring_up(&mut m, FEATURES, &[rx, tx]);
    for i in 0..8u16 {
        let head = rx.chain(&mem, i, &[(RXB + 0x1000 * u64::from(i), 2048, true)]);
        rx.publish(&mem, head);
    }
    m.process_queue_event(RX_QUEUE);
    // An ARP who-has for `ip` from 169.254.0.2 (RFC 826 layout).
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC);
    let mut sender = ip.octets();
    sender[3] = sender[3].wrapping_add(1);
    arp.extend_from_slice(&sender);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&ip.octets());
    let f = frame(0, &arp);
    mem.write_slice(&f, GuestAddress(TXB)).unwrap();
    let head = tx.chain(&mem, 0, &[(TXB, f.len() as u32, false)]);
    tx.publish(&mem, head);
    m.process_queue_event(TX_QUEUE);
    assert_eq!(m.device().stats().tx_frames, 1, "{:?}", m.device().stats());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        m.process_device_event(TAP_TOKEN);
        for i in 0..rx.used_idx(&mem) {
            let (id, len) = rx.used_elem(&mem, i);
            let mut got = vec![0u8; len as usize];
            mem.read_slice(&mut got, GuestAddress(RXB + 0x1000 * u64::from(id as u16)))
                .unwrap();
            // An ARP reply (opcode 2) to our MAC.
            if got.len() >= 42 + NET_HDR_LEN
                && got[NET_HDR_LEN..NET_HDR_LEN + 6] == MAC
                && got[NET_HDR_LEN + 12..NET_HDR_LEN + 14] == [0x08, 0x06]
                && got[NET_HDR_LEN + 20..NET_HDR_LEN + 22] == [0, 2]
            {
                assert_eq!(&got[10..12], &[1, 0]);
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no ARP reply from {ip} on {name}: {:?}", m.device().stats());
}

#[test]
fn a_restored_interface_transmits_at_the_next_used_index_on_a_new_tap() {
    let mut r = rig();
    let limits = RateLimiterConfig {
        bandwidth: None,
        ops: Some(crate::rate_limiter::TokenBucketConfig {
            size: 1000,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
    };
    r.m.device_mut()
        .set_rate_limiters(&limits, &RateLimiterConfig::default());
    let f = frame(0, b"before");
    r.send(&f, &[(TXB, f.len() as u32, false)]);
    assert_eq!(r.peer_recv().unwrap(), f);
    let state = r.m.save_state();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(
        serde_json::from_str::<crate::virtio::VirtioMmioState>(&json).unwrap(),
        state
    );

    // Another tap name (the user's override), the same MAC.
    let (ours, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = File::from(OwnedFd::from(ours));
    let net = Net::from_tap_file(tap, "test1".into(), MAC).unwrap();
    let mut m = VirtioMmio::new(net, r.mem.clone()).unwrap();
    m.restore_state(&state).unwrap();
    assert_eq!(
        m.device().rate_limiters(),
        (limits, RateLimiterConfig::default())
    );
    assert_eq!(m.device().tap_name(), "test1");
    assert_eq!(m.interrupt_evt().unwrap().read().unwrap(), 1);
    r.m = m;
    r.peer = peer;
    run_rearmed(&mut r.m);
    let f = frame(0, b"after");
    r.send(&f, &[(TXB, f.len() as u32, false)]);
    assert_eq!(r.peer_recv().unwrap(), f);
    assert_eq!(r.tx.used_idx(&r.mem), 2);
    assert_eq!(r.tx.used_elem(&r.mem, 1), (1, 0));

    // Another MAC is not the interface the guest knew.
    let (ours, _peer) = UnixDatagram::pair().unwrap();
    let other = [0x06, 0, 0, 0, 0, 9];
    let net = Net::from_tap_file(File::from(OwnedFd::from(ours)), "test2".into(), other).unwrap();
    let mut m = VirtioMmio::new(net, r.mem.clone()).unwrap();
    let err = m.restore_state(&state).unwrap_err();
    assert!(err.to_string().contains("06:00:ac:10:00:02"), "{err}");
}
