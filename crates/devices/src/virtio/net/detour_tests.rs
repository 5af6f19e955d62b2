//! The detour on virtio-net's path, with a fake tap (a datagram socket) and a fake detour.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::testutil::*;
use crate::virtio::{VirtioMmio, INTERRUPT_VRING};

const MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC;
const RXB: u64 = 0x4_0000;
const TXB: u64 = 0x8_0000;
/// The first byte of the frames the fake detour takes.
const OURS: u8 = 0xaa;

/// Takes frames that start with [`OURS`] and answers each with its bytes reversed; also
/// hands out whatever is put in `out`.
#[derive(Default)]
struct Fake {
    taken: Vec<Vec<u8>>,
    out: VecDeque<Vec<u8>>,
    /// Claims to have frames while giving none (a broken detour).
    lies: bool,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Fake>>);

impl FrameDetour for Shared {
    fn detour_tx(&mut self, frame: &[u8]) -> bool {
        let mut f = self.0.lock().unwrap();
        if frame.first() != Some(&OURS) {
            return false;
        }
        f.taken.push(frame.to_vec());
        f.out.push_back(frame.iter().rev().copied().collect());
        true
    }

    fn next_rx(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.0.lock().unwrap().out.pop_front()?;
        buf.get_mut(..frame.len())?.copy_from_slice(&frame);
        Some(frame.len())
    }

    fn has_rx(&self) -> bool {
        let f = self.0.lock().unwrap();
        f.lies || !f.out.is_empty()
    }
}

struct Rig {
    m: VirtioMmio<Net>,
    mem: GuestMemoryMmap,
    rx: TestQueue,
    tx: TestQueue,
    peer: UnixDatagram,
    rx_next: u16,
    tx_next: u16,
    detour: Shared,
}

fn rig() -> Rig {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut net = Net::from_tap_file(File::from(OwnedFd::from(ours)), "test0".into(), MAC).unwrap();
    let detour = Shared::default();
    net.set_detour(Box::new(detour.clone()));
    let mem = guest_mem();
    let mut m = VirtioMmio::new(net, mem.clone()).unwrap();
    let rx = TestQueue::new(0x1000, QUEUE_SIZE);
    let tx = TestQueue::new(0x3000, QUEUE_SIZE);
    bring_up(&mut m, FEATURES, &[rx, tx]);
    m.process_queue_event(RX_QUEUE);
    m.process_queue_event(TX_QUEUE);
    Rig {
        m,
        mem,
        rx,
        tx,
        peer,
        rx_next: 0,
        tx_next: 0,
        detour,
    }
}

/// `payload` behind a blank virtio-net header.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

impl Rig {
    fn add_rx(&mut self, n: u16, notify: bool) {
        for _ in 0..n {
            let at = RXB + 0x1000 * u64::from(self.rx_next);
            let head = self.rx.chain(&self.mem, self.rx_next, &[(at, 2048, true)]);
            self.rx_next += 1;
            self.rx.publish(&self.mem, head);
        }
        if notify {
            self.m.process_queue_event(RX_QUEUE);
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let at = TXB + 0x1000 * u64::from(self.tx_next);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        let head = self
            .tx
            .chain(&self.mem, self.tx_next, &[(at, bytes.len() as u32, false)]);
        self.tx_next += 1;
        self.tx.publish(&self.mem, head);
        self.m.process_queue_event(TX_QUEUE);
    }

    fn peer_recv(&self) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 70000];
        let n = self.peer.recv(&mut b).ok()?;
        b.truncate(n);
        Some(b)
    }

    /// The frames delivered to the guest, in order, headers included.
    fn delivered(&self) -> Vec<Vec<u8>> {
        (0..self.rx.used_idx(&self.mem))
            .map(|i| {
                let (id, len) = self.rx.used_elem(&self.mem, i);
                let mut v = vec![0u8; len as usize];
                let at = RXB + 0x1000 * u64::from(id);
                self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
                v
            })
            .collect()
    }
}

/// The header the device writes on a delivered frame: blank, `num_buffers` 1.
fn delivered(payload: &[u8]) -> Vec<u8> {
    let mut f = frame(payload);
    f[10] = 1;
    f
}

#[test]
fn the_detours_frames_never_reach_the_tap_and_its_answers_reach_the_guest() {
    let mut r = rig();
    r.add_rx(4, true);
    let intr = r.m.interrupt_evt().unwrap().try_clone().unwrap();
    let _ = intr.read();
    // Its own header is not passed on: the detour sees the Ethernet frame alone.
    let mut f = frame(&[OURS, 1, 2, 3]);
    f[0] = 1; // a checksum request the device zeroes
    r.send(&f);
    assert_eq!(r.peer_recv(), None);
    assert_eq!(r.detour.0.lock().unwrap().taken, [vec![OURS, 1, 2, 3]]);
    // Its answer is in the guest at once, with the interrupt.
    assert_eq!(r.delivered(), [delivered(&[3, 2, 1, OURS])]);
    assert_eq!(intr.read().unwrap(), 1);
    assert_eq!(r.m.interrupt().status() & INTERRUPT_VRING, INTERRUPT_VRING);
    // Other frames go to the tap untouched.
    let other = frame(&[0x02, 9, 9, 9]);
    r.send(&other);
    assert_eq!(r.peer_recv().unwrap(), other);
    assert_eq!(r.tx.used_idx(&r.mem), 2);
    let s = r.m.device().stats();
    assert_eq!((s.tx_detoured, s.tx_frames), (1, 1));
    assert_eq!((s.rx_detoured, s.rx_frames), (1, 1));
    assert!(r.m.device().counters().contains(&("tx_detoured", 1)));
}

#[test]
fn the_detour_and_the_tap_take_turns() {
    let mut r = rig();
    for i in 0..3u8 {
        r.peer.send(&frame(&[0x10 + i; 20])).unwrap();
        r.detour.0.lock().unwrap().out.push_back(vec![0x20 + i; 20]);
    }
    r.add_rx(6, true);
    let firsts: Vec<u8> = r.delivered().iter().map(|f| f[NET_HDR_LEN]).collect();
    assert_eq!(firsts, [0x10, 0x20, 0x11, 0x21, 0x12, 0x22]);
    // With the tap empty, the detour's frames still flow, and the other way round.
    r.detour.0.lock().unwrap().out.push_back(vec![0x30; 20]);
    r.detour.0.lock().unwrap().out.push_back(vec![0x31; 20]);
    r.add_rx(2, true);
    r.peer.send(&frame(&[0x40; 20])).unwrap();
    r.peer.send(&frame(&[0x41; 20])).unwrap();
    r.add_rx(2, true);
    let firsts: Vec<u8> = r.delivered()[6..].iter().map(|f| f[NET_HDR_LEN]).collect();
    assert_eq!(firsts, [0x30, 0x31, 0x40, 0x41]);
}

#[test]
fn the_detours_answers_wait_for_receive_buffers() {
    let mut r = rig();
    r.send(&frame(&[OURS, 7]));
    assert!(r.delivered().is_empty());
    assert!(r.m.is_running());
    r.add_rx(1, true);
    assert_eq!(r.delivered(), [delivered(&[7, OURS])]);
}

#[test]
fn a_detour_that_claims_frames_it_never_gives_stalls_nothing() {
    let mut r = rig();
    r.detour.0.lock().unwrap().lies = true;
    r.add_rx(2, true);
    r.send(&frame(&[0x02, 1]));
    assert_eq!(r.peer_recv().unwrap(), frame(&[0x02, 1]));
    assert!(r.delivered().is_empty());
    // The tap still delivers.
    r.peer.send(&frame(&[0x05; 10])).unwrap();
    r.m.process_device_event(TAP_TOKEN);
    assert_eq!(r.delivered(), [delivered(&[0x05; 10])]);
    // A detour frame too large for the room is dropped by the detour, not the device.
    let mut f = r.detour.0.lock().unwrap();
    f.lies = false;
    f.out.push_back(vec![1; MAX_FRAME_LEN]);
    drop(f);
    r.m.process_queue_event(RX_QUEUE);
    assert_eq!(r.delivered().len(), 1);
    assert!(r.m.is_running());
}

#[test]
fn without_a_detour_every_frame_goes_to_the_tap() {
    let mut r = rig();
    assert!(r.m.device_mut().clear_detour().is_some());
    let f = frame(&[OURS, 1]);
    r.send(&f);
    assert_eq!(r.peer_recv().unwrap(), f);
    assert!(r.detour.0.lock().unwrap().taken.is_empty());
}
