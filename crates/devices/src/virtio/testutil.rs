//! Test helpers: a guest driver's side of the virtio-mmio registers and of a split virtqueue,
//! written by hand into guest memory so tests can build any ring, broken ones included.

// Shared by the tests of every virtio device; not each uses every helper.
#![allow(dead_code)]

use crate::virtio::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{VirtioMmio, CONFIG_SPACE_OFFSET};
use super::{
    VirtioDevice, VirtioMemory, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
};
use crate::BusDevice;

/// Descriptor flag: the chain continues in `next` (virtio v1.2, 2.7.5).
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (virtio v1.2, 2.7.5).
pub const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table (virtio v1.2, 2.7.5.3).
pub const F_INDIRECT: u16 = 4;

/// A buffer of a test chain: (guest address, length, device-writable).
pub type Buf = (u64, u32, bool);

/// 1 MiB of guest RAM at address 0.
pub fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// Reads a 32-bit register.
pub fn rd<D: VirtioDevice<M>, M: VirtioMemory>(mmio: &mut VirtioMmio<D, M>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    mmio.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn wr<D: VirtioDevice<M>, M: VirtioMemory>(
    mmio: &mut VirtioMmio<D, M>,
    offset: u64,
    value: u32,
) {
    mmio.write(offset, &value.to_le_bytes());
}

/// Reads `len` bytes of configuration space at `offset`, byte by byte.
pub fn read_config<D: VirtioDevice<M>, M: VirtioMemory>(
    mmio: &mut VirtioMmio<D, M>,
    offset: u64,
    len: usize,
) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let mut b = [0u8; 1];
            mmio.read(CONFIG_SPACE_OFFSET + offset + i, &mut b);
            b[0]
        })
        .collect()
}

/// A split virtqueue laid out by the test "driver" at `base`: descriptor table, then the
/// available ring, then the used ring (each suitably aligned).
#[derive(Debug, Clone, Copy)]
pub struct TestQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl TestQueue {
    pub fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        TestQueue {
            size,
            desc,
            avail,
            used,
        }
    }

    /// Writes descriptor `index`.
    pub fn set_desc(
        &self,
        mem: &impl GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(index)))
            .unwrap();
    }

    /// Writes a chain of `(addr, len, writable)` buffers at descriptors `first..`, linked in
    /// order, and returns its head.
    pub fn chain(&self, mem: &impl GuestMemory, first: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.set_desc(mem, idx, addr, len, flags, idx + 1);
        }
        first
    }

    /// Writes a chain of `bufs` as an indirect table at guest address `table`, and descriptor
    /// `index` pointing at it; returns `index` (the chain's head).
    pub fn indirect(&self, mem: &impl GuestMemory, index: u16, table: u64, bufs: &[Buf]) -> u16 {
        let t = TestQueue {
            desc: table,
            ..*self
        };
        t.chain(mem, 0, bufs);
        self.set_desc(mem, index, table, 16 * bufs.len() as u32, F_INDIRECT, 0);
        index
    }

    /// Makes the chain at `head` available and moves the available index on.
    pub fn publish(&self, mem: &impl GuestMemory, head: u16) {
        let idx = self.avail_idx(mem);
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.set_avail_idx(mem, idx.wrapping_add(1));
    }

    pub fn avail_idx(&self, mem: &impl GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }

    pub fn set_avail_idx(&self, mem: &impl GuestMemory, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    pub fn used_idx(&self, mem: &impl GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used ring entry `i`: (head id, bytes written).
    pub fn used_elem(&self, mem: &impl GuestMemory, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// Queue selector, size, ring addresses and ready, as a driver writes them.
pub fn setup_queue<D: VirtioDevice<M>, M: VirtioMemory>(
    mmio: &mut VirtioMmio<D, M>,
    index: u32,
    q: &TestQueue,
) {
    wr(mmio, 0x30, index);
    wr(mmio, 0x38, u32::from(q.size));
    wr(mmio, 0x80, q.desc as u32);
    wr(mmio, 0x84, (q.desc >> 32) as u32);
    wr(mmio, 0x90, q.avail as u32);
    wr(mmio, 0x94, (q.avail >> 32) as u32);
    wr(mmio, 0xa0, q.used as u32);
    wr(mmio, 0xa4, (q.used >> 32) as u32);
    wr(mmio, 0x44, 1);
}

/// The whole initialization of virtio v1.2, 3.1.1: acknowledge, driver, features, FEATURES_OK,
/// queues, DRIVER_OK. Panics if the device refuses the features.
pub fn bring_up<D: VirtioDevice<M>, M: VirtioMemory>(
    mmio: &mut VirtioMmio<D, M>,
    features: u64,
    queues: &[TestQueue],
) {
    wr(mmio, 0x70, 0);
    wr(mmio, 0x70, STATUS_ACKNOWLEDGE);
    wr(mmio, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(mmio, 0x24, 0);
    wr(mmio, 0x20, features as u32);
    wr(mmio, 0x24, 1);
    wr(mmio, 0x20, (features >> 32) as u32);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(mmio, 0x70, s);
    assert_eq!(rd(mmio, 0x70), s, "features {features:#x} refused");
    for (i, q) in queues.iter().enumerate() {
        setup_queue(mmio, i as u32, q);
    }
    wr(mmio, 0x70, s | STATUS_DRIVER_OK);
}

/// Gives the device the wake-ups it asked for (queues whose notification `EventFd` it had
/// signalled again, its budget spent), as the event loop would, until it asks for none; returns
/// how many there were.
pub fn run_rearmed<D: VirtioDevice<M>, M: VirtioMemory>(mmio: &mut VirtioMmio<D, M>) -> usize {
    let mut wakeups = 0;
    loop {
        let ready: Vec<usize> = (0..mmio.queue_events().len())
            .filter(|&i| mmio.queue_events()[i].read().is_ok())
            .collect();
        if ready.is_empty() {
            return wakeups;
        }
        for i in ready {
            mmio.process_queue_event(i);
            wakeups += 1;
        }
    }
}

/// Another event source on the same event loop as a device (standing in for SIGTERM's
/// signalfd or serial input): an `EventFd` whose handler notes what `probe` says at that
/// moment (e.g. how far a flooded queue's used index had moved).
pub struct Bystander {
    /// Made readable by the test.
    pub evt: EventFd,
    probe: Box<dyn FnMut() -> u16 + Send>,
    /// What `probe` said each time the handler ran.
    pub seen: Vec<u16>,
}

impl Bystander {
    pub fn new(probe: impl FnMut() -> u16 + Send + 'static) -> Self {
        Bystander {
            evt: super::new_eventfd().unwrap(),
            probe: Box::new(probe),
            seen: Vec::new(),
        }
    }
}

impl MutEventSubscriber for Bystander {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        super::drain_eventfd(&self.evt);
        self.seen.push((self.probe)());
    }
}
