//! Taking descriptor chains off a queue and checking them before a device touches them.
//!
//! `virtio_queue`'s `DescriptorChain` iterator already refuses to follow a chain further than
//! the queue size (its time-to-live), past the descriptor table, or into unreadable memory; but
//! it reports all of that by simply ending early. [`ChainBuffers::load`] tells such a truncated
//! chain from a complete one (the last descriptor it yielded still has `VIRTQ_DESC_F_NEXT`),
//! sorts the buffers into their device-readable and device-writable parts, and notes which of
//! them are not wholly inside guest RAM, so that a device can answer with an error status
//! instead of reading or writing half a buffer.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    pub fn load(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
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
pub(crate) fn gather(mem: &GuestMemoryMmap, segs: &[Segment], start: u64, buf: &mut [u8]) -> bool {
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
pub(crate) fn scatter(mem: &GuestMemoryMmap, segs: &[Segment], start: u64, data: &[u8]) -> bool {
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

/// Takes the next available chain off `queue`, if any.
///
/// A queue the driver never made ready has nothing to take. An available index that ran more
/// than the queue size ahead, or an available ring the device cannot read, is a fault; so is a
/// head index past the descriptor table (the used ring could not even name it).
pub(crate) fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, GuestFault> {
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
pub(crate) fn has_available(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    queue.ready()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Returns chain `head` to the driver with `len` bytes written into it.
pub(crate) fn complete(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), GuestFault> {
    queue
        .add_used(mem, head, len)
        .map_err(|_| GuestFault::RingAccess)
}

/// Whether the driver wants an interrupt for the buffers used since the last call.
pub(crate) fn needs_interrupt(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    // If the used-event field cannot be read, interrupting is the safe answer.
    queue.needs_notification(mem).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
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
