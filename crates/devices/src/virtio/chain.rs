//! Taking descriptor chains off a queue and checking them before a device touches them.
//!
//! `virtio_queue`'s `DescriptorChain` iterator already refuses to follow a chain further than
//! the queue size (its time-to-live), past the descriptor table, or into unreadable memory; but
//! it reports all of that by simply ending early. [`ChainBuffers::load`] tells such a truncated
//! chain from a complete one (the last descriptor it yielded still has `VIRTQ_DESC_F_NEXT`),
//! sorts the buffers into their device-readable and device-writable parts, and notes which of
//! them are not wholly inside guest RAM, so that a device can answer with an error status
//! instead of reading or writing half a buffer.
//!
//! [`process_chains`] is the one loop every device runs over a queue: it takes chains while the
//! wake-up's [`Budget`] lasts, hands each to the device, returns it to the driver, and says
//! whether work was left for a later wake-up.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

pub(crate) use super::in_ram;
use super::GuestFault;

/// One buffer of a chain: `len` bytes of guest memory at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: u64,
    pub len: u32,
}

/// A chain's buffers, sorted by direction. Reused between requests to avoid allocating.
#[derive(Debug, Default)]
pub(crate) struct ChainBuffers {
    /// Head index of the chain (what goes into the used ring).
    pub head: u16,
    /// Device-readable buffers, in chain order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in chain order.
    pub writable: Vec<Segment>,
    /// A device-readable buffer came after a device-writable one (virtio v1.2, 2.7.4.2: the
    /// driver MUST place device-writable descriptors after device-readable ones).
    pub misordered: bool,
    /// Some buffer is not wholly inside guest RAM.
    pub outside_ram: bool,
}

impl ChainBuffers {
    /// Walks `chain` into `self`. A chain that ended early (a loop, more descriptors than the
    /// queue size, a `next` index past the table, a bad indirect table, an unreadable
    /// descriptor) or that yielded no descriptor at all is a [`GuestFault::BrokenChain`].
    pub fn load<M: GuestMemory>(
        &mut self,
        chain: DescriptorChain<&M>,
        mem: &M,
    ) -> Result<(), GuestFault> {
        let head = chain.head_index();
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.misordered = false;
        self.outside_ram = false;
        let mut last: Option<Descriptor> = None;
        for desc in chain {
            let seg = Segment {
                addr: desc.addr().0,
                len: desc.len(),
            };
            if !in_ram(mem, seg.addr, u64::from(seg.len)) {
                self.outside_ram = true;
            }
            if desc.is_write_only() {
                self.writable.push(seg);
            } else {
                if !self.writable.is_empty() {
                    self.misordered = true;
                }
                self.readable.push(seg);
            }
            last = Some(desc);
        }
        match last {
            Some(desc) if !desc.has_next() => Ok(()),
            _ => Err(GuestFault::BrokenChain { head }),
        }
    }

    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        total_len(&self.readable)
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        total_len(&self.writable)
    }
}

/// Sum of the lengths (a chain is at most 2^32 bytes, so this never overflows a `u64`).
pub(crate) fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The pieces of `segs` covering bytes `[start, start + len)` of their concatenation, as
/// `(guest address, length)` pairs; empty pieces are skipped. Stops at the end of `segs`.
pub(crate) fn pieces(
    segs: &[Segment],
    start: u64,
    len: u64,
) -> impl Iterator<Item = (u64, u32)> + '_ {
    let end = start.saturating_add(len);
    let mut pos = 0u64;
    segs.iter().filter_map(move |seg| {
        let seg_start = pos;
        let seg_end = pos + u64::from(seg.len);
        pos = seg_end;
        let from = start.max(seg_start);
        let to = end.min(seg_end);
        if from >= to {
            return None;
        }
        // `to - from <= seg.len`, so both conversions are lossless.
        let piece_len = u32::try_from(to - from).ok()?;
        let addr = seg.addr.checked_add(from - seg_start)?;
        Some((addr, piece_len))
    })
}

/// Fills `buf` from bytes `[start, start + buf.len())` of `segs`; false if they do not hold
/// that many bytes or any of them is outside guest RAM (then `buf` is partly written).
pub(crate) fn gather<M: GuestMemory>(
    mem: &M,
    segs: &[Segment],
    start: u64,
    buf: &mut [u8],
) -> bool {
    let mut done = 0usize;
    for (addr, len) in pieces(segs, start, buf.len() as u64) {
        let len = len as usize;
        let Some(dst) = buf.get_mut(done..done + len) else {
            return false;
        };
        if mem.read_slice(dst, GuestAddress(addr)).is_err() {
            return false;
        }
        done += len;
    }
    done == buf.len()
}

/// Writes `data` at bytes `[start, start + data.len())` of `segs`; false if they do not hold
/// that many bytes or any of them is outside guest RAM (then some bytes may have been written).
pub(crate) fn scatter<M: GuestMemory>(mem: &M, segs: &[Segment], start: u64, data: &[u8]) -> bool {
    let mut done = 0usize;
    for (addr, len) in pieces(segs, start, data.len() as u64) {
        let len = len as usize;
        let Some(src) = data.get(done..done + len) else {
            return false;
        };
        if mem.write_slice(src, GuestAddress(addr)).is_err() {
            return false;
        }
        done += len;
    }
    done == data.len()
}

/// The most chains a device takes off its queues in one wake-up (one
/// [`process_queue`](super::VirtioDevice::process_queue) or
/// [`process_event`](super::VirtioDevice::process_event) call).
///
/// Every device runs on the VMM's one event loop, next to SIGTERM's signalfd, serial input and
/// the other devices. A guest can keep a queue full for ever; without a bound, one wake-up would
/// drain it for as long as the guest refills it and nothing else on the loop would be served.
/// 64 chains keep the per-chain overhead (a lock, an epoll round) small next to the work while
/// bounding how long the others wait.
pub const MAX_CHAINS_PER_WAKEUP: u32 = 64;

/// The most payload bytes (moved between guest memory and the host, either way) a device
/// handles in one wake-up; see [`MAX_CHAINS_PER_WAKEUP`]. A few large requests (a 16 MiB
/// virtio-blk read) cost as much as many small ones: 1 MiB bounds the time a wake-up takes,
/// whatever the chains' sizes, to about a millisecond of copying. The chain that crosses the
/// bound is finished; no new chain is taken after it.
pub const MAX_BYTES_PER_WAKEUP: u64 = 1 << 20;

/// What is left of one wake-up's allowance: [`MAX_CHAINS_PER_WAKEUP`] chains or
/// [`MAX_BYTES_PER_WAKEUP`] bytes, whichever runs out first. A device makes one per wake-up and
/// shares it between the queues it serves in that wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    chains: u32,
    bytes: u64,
}

impl Budget {
    /// A full allowance.
    pub fn new() -> Budget {
        Budget {
            chains: MAX_CHAINS_PER_WAKEUP,
            bytes: MAX_BYTES_PER_WAKEUP,
        }
    }

    /// Whether no further chain may be taken.
    pub fn is_spent(&self) -> bool {
        self.chains == 0 || self.bytes == 0
    }

    /// Counts one chain that moved `bytes` bytes.
    fn charge(&mut self, bytes: u64) {
        self.chains = self.chains.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// What a device did with one chain in [`process_chains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Return the chain to the driver with `len` bytes written into it (the used length);
    /// `bytes` payload bytes were moved, either way, and are charged to the budget.
    Done {
        /// The used length for the used ring.
        len: u32,
        /// Bytes moved between guest memory and the host.
        bytes: u64,
    },
    /// Leave the chain in the ring and stop: the device waits for something else first
    /// (tokens, host data, room for its replies) and will come back on its own.
    Wait,
    /// Leave the chain in the ring and go on with the next one: what it was taken for went
    /// away (a frame too large for it was dropped). Counts as a chain of the budget.
    Retry,
    /// Keep the chain off the ring without returning it: the device holds it and gives it
    /// back later itself ([`return_chain`]), as virtio-balloon does with the driver's
    /// statistics buffer. Counts as a chain of the budget.
    Hold,
}

/// Why [`process_chains`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchEnd {
    /// The queue had no chain left (or is not ready).
    Empty,
    /// The device answered [`Step::Wait`].
    Waiting,
    /// The budget ran out with chains still available: the device must get another wake-up.
    BudgetSpent,
}

/// How one [`process_chains`] call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Chains were returned and the driver wants an interrupt for them.
    pub interrupt: bool,
    /// Why it stopped.
    pub end: BatchEnd,
}

impl Batch {
    /// Whether chains were left for a later wake-up because the budget ran out.
    pub fn more(&self) -> bool {
        self.end == BatchEnd::BudgetSpent
    }
}

/// Takes chains off `queue` while `budget` lasts, loads each into `bufs` and hands it to
/// `handle`, which says what became of it ([`Step`]); completed chains go to the used ring.
///
/// A fault (from the rings, a broken chain, or `handle`) ends the batch at once: the device is
/// to stop. Otherwise the batch says whether the driver wants an interrupt and why it stopped;
/// with [`BatchEnd::BudgetSpent`] the caller must make sure it is woken again (the transport
/// does, for the queues a device names in [`Processed`](super::Processed)).
pub(crate) fn process_chains<M: GuestMemory, F>(
    queue: &mut Queue,
    mem: &M,
    bufs: &mut ChainBuffers,
    budget: &mut Budget,
    mut handle: F,
) -> Result<Batch, GuestFault>
where
    F: FnMut(&ChainBuffers) -> Result<Step, GuestFault>,
{
    let mut used = false;
    let end = loop {
        if budget.is_spent() {
            break if has_available(queue, mem) {
                BatchEnd::BudgetSpent
            } else {
                BatchEnd::Empty
            };
        }
        let Some(chain) = next_chain(queue, mem)? else {
            break BatchEnd::Empty;
        };
        bufs.load(chain, mem)?;
        match handle(bufs)? {
            Step::Done { len, bytes } => {
                complete(queue, mem, bufs.head, len)?;
                used = true;
                budget.charge(bytes);
            }
            Step::Wait => {
                queue.go_to_previous_position();
                break BatchEnd::Waiting;
            }
            Step::Retry => {
                queue.go_to_previous_position();
                budget.charge(0);
            }
            Step::Hold => budget.charge(0),
        }
    };
    Ok(Batch {
        interrupt: used && needs_interrupt(queue, mem),
        end,
    })
}

/// Takes the next available chain off `queue`, if any.
///
/// A queue the driver never made ready has nothing to take. An available index that ran more
/// than the queue size ahead, or an available ring the device cannot read, is a fault; so is a
/// head index past the descriptor table (the used ring could not even name it).
fn next_chain<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, GuestFault> {
    if !queue.ready() {
        return Ok(None);
    }
    let size = queue.size();
    // `iter` checks the available index against the queue size; read it first ourselves to
    // tell a memory error from an index error.
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| GuestFault::RingAccess)?;
    if (avail - Wrapping(queue.next_avail())).0 > size {
        return Err(GuestFault::AvailIndex);
    }
    let next = queue.iter(mem).map_err(|_| GuestFault::AvailIndex)?.next();
    match next {
        Some(chain) if chain.head_index() >= size => Err(GuestFault::HeadOutOfRange {
            head: chain.head_index(),
        }),
        Some(chain) => Ok(Some(chain)),
        // The available index moved on but the ring entry could not be read.
        None if queue.next_avail() != avail.0 => Err(GuestFault::RingAccess),
        None => Ok(None),
    }
}

/// Whether the driver has made a chain available that the device has not taken yet.
pub(crate) fn has_available<M: GuestMemory>(queue: &Queue, mem: &M) -> bool {
    queue.ready()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Returns chain `head` to the driver with `len` bytes written into it.
fn complete<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
) -> Result<(), GuestFault> {
    queue
        .add_used(mem, head, len)
        .map_err(|_| GuestFault::RingAccess)
}

/// Returns a chain the device held ([`Step::Hold`]) to the driver with `len` bytes written
/// into it; answers whether the driver wants an interrupt for it.
pub(crate) fn return_chain<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
) -> Result<bool, GuestFault> {
    complete(queue, mem, head, len)?;
    Ok(needs_interrupt(queue, mem))
}

/// Whether the driver wants an interrupt for the buffers used since the last call.
fn needs_interrupt<M: GuestMemory>(queue: &mut Queue, mem: &M) -> bool {
    // If the used-event field cannot be read, interrupting is the safe answer.
    queue.needs_notification(mem).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::{guest_mem, TestQueue};
    use crate::virtio::GuestMemoryMmap;

    /// A ready queue on the rings of `tq`.
    fn ready_queue(tq: &TestQueue) -> Queue {
        let mut q = Queue::new(tq.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(tq.desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(tq.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(tq.used)).unwrap();
        q.set_ready(true);
        q
    }

    /// `n` one-buffer chains, heads `0..n`.
    fn publish(mem: &GuestMemoryMmap, tq: &TestQueue, n: u16) {
        for i in 0..n {
            tq.chain(mem, i, &[(0x8_0000, 16, true)]);
            tq.publish(mem, i);
        }
    }

    #[test]
    fn a_batch_ends_when_the_chain_budget_is_spent() {
        let mem = guest_mem();
        let tq = TestQueue::new(0x1000, 256);
        publish(&mem, &tq, 100);
        let mut q = ready_queue(&tq);
        let mut bufs = ChainBuffers::default();
        let mut heads = Vec::new();
        let mut run = |q: &mut Queue, heads: &mut Vec<u16>| {
            let mut budget = Budget::new();
            process_chains(q, &mem, &mut bufs, &mut budget, |b| {
                heads.push(b.head);
                Ok(Step::Done { len: 16, bytes: 16 })
            })
            .unwrap()
        };
        let batch = run(&mut q, &mut heads);
        assert_eq!(batch.end, BatchEnd::BudgetSpent);
        assert!(batch.more() && batch.interrupt);
        assert_eq!(heads.len(), MAX_CHAINS_PER_WAKEUP as usize);
        assert_eq!(u32::from(tq.used_idx(&mem)), MAX_CHAINS_PER_WAKEUP);
        // The next wake-up takes the rest, each chain once, in order.
        let batch = run(&mut q, &mut heads);
        assert_eq!(batch.end, BatchEnd::Empty);
        assert!(!batch.more());
        assert_eq!(heads, (0..100).collect::<Vec<u16>>());
        assert_eq!(tq.used_idx(&mem), 100);
        assert_eq!(tq.used_elem(&mem, 99), (99, 16));
        // Exactly a budget's worth left: spent, but nothing more to come back for.
        publish(&mem, &tq, 64);
        assert_eq!(run(&mut q, &mut heads).end, BatchEnd::Empty);
        assert_eq!(tq.used_idx(&mem), 164);
    }

    #[test]
    fn a_batch_ends_when_the_byte_budget_is_spent() {
        let mem = guest_mem();
        let tq = TestQueue::new(0x1000, 16);
        publish(&mem, &tq, 10);
        let mut q = ready_queue(&tq);
        let mut bufs = ChainBuffers::default();
        let mut budget = Budget::new();
        let mut n = 0;
        // 300 KiB a chain: the fourth crosses 1 MiB and is finished; no fifth is taken.
        let batch = process_chains(&mut q, &mem, &mut bufs, &mut budget, |_| {
            n += 1;
            Ok(Step::Done {
                len: 0,
                bytes: 300 << 10,
            })
        })
        .unwrap();
        assert_eq!((n, batch.end), (4, BatchEnd::BudgetSpent));
        assert!(budget.is_spent());
        assert_eq!(tq.used_idx(&mem), 4);
    }

    #[test]
    fn wait_leaves_the_chain_and_retry_counts_against_the_budget() {
        let mem = guest_mem();
        let tq = TestQueue::new(0x1000, 16);
        publish(&mem, &tq, 3);
        let mut q = ready_queue(&tq);
        let mut bufs = ChainBuffers::default();
        let mut budget = Budget::new();
        let batch = process_chains(&mut q, &mem, &mut bufs, &mut budget, |b| {
            Ok(if b.head == 0 {
                Step::Done { len: 1, bytes: 1 }
            } else {
                Step::Wait
            })
        })
        .unwrap();
        assert_eq!(batch.end, BatchEnd::Waiting);
        assert!(batch.interrupt);
        assert_eq!(tq.used_idx(&mem), 1);
        // Chain 1 is still there; retrying it for ever ends with the budget.
        let mut tries = 0;
        let mut budget = Budget::new();
        let batch = process_chains(&mut q, &mem, &mut bufs, &mut budget, |b| {
            assert_eq!(b.head, 1);
            tries += 1;
            Ok(Step::Retry)
        })
        .unwrap();
        assert_eq!(batch.end, BatchEnd::BudgetSpent);
        assert!(!batch.interrupt);
        assert_eq!(tries, MAX_CHAINS_PER_WAKEUP);
        assert_eq!(tq.used_idx(&mem), 1);
        // A fault ends the batch with nothing completed.
        let err = process_chains(&mut q, &mem, &mut bufs, &mut Budget::new(), |b| {
            Err(GuestFault::NoStatusByte { head: b.head })
        })
        .unwrap_err();
        assert_eq!(err, GuestFault::NoStatusByte { head: 1 });
        assert_eq!(tq.used_idx(&mem), 1);
    }

    fn segs() -> Vec<Segment> {
        vec![
            Segment {
                addr: 0x1000,
                len: 4,
            },
            Segment {
                addr: 0x2000,
                len: 0,
            },
            Segment {
                addr: 0x3000,
                len: 8,
            },
        ]
    }

    #[test]
    fn pieces_cover_a_range_across_segments() {
        let s = segs();
        let all: Vec<_> = pieces(&s, 0, 12).collect();
        assert_eq!(all, [(0x1000, 4), (0x3000, 8)]);
        let mid: Vec<_> = pieces(&s, 2, 4).collect();
        assert_eq!(mid, [(0x1002, 2), (0x3000, 2)]);
        let tail: Vec<_> = pieces(&s, 11, 100).collect();
        assert_eq!(tail, [(0x3007, 1)]);
        assert_eq!(pieces(&s, 12, 1).count(), 0);
        assert_eq!(pieces(&s, u64::MAX, u64::MAX).count(), 0);
        assert_eq!(total_len(&s), 12);
    }

    #[test]
    fn gather_and_scatter_refuse_short_or_outside_buffers() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let s = segs();
        assert!(scatter(&mem, &s, 0, b"abcdefghijkl"));
        let mut buf = [0u8; 12];
        assert!(gather(&mem, &s, 0, &mut buf));
        assert_eq!(&buf, b"abcdefghijkl");
        // More bytes than the segments hold.
        assert!(!gather(&mem, &s, 1, &mut buf));
        assert!(!scatter(&mem, &s, 1, &buf));
        // A segment past the end of RAM.
        let outside = [Segment {
            addr: 0xfffc,
            len: 8,
        }];
        assert!(!in_ram(&mem, 0xfffc, 8));
        assert!(!gather(&mem, &outside, 0, &mut [0u8; 8]));
        assert!(!scatter(&mem, &outside, 0, &[0u8; 8]));
        assert!(in_ram(&mem, 0xfffc, 4));
        assert!(in_ram(&mem, u64::MAX, 0));
        assert!(!in_ram(&mem, u64::MAX, 1));
    }
}
