//! The steps of a virtio input: what each does, and how it is read from (and written to)
//! the fuzzer's bytes.

use arbitrary::Unstructured;

use crate::{put_bytes, take_bytes, Encode};

/// One step of a virtio input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// A read of `size` (1, 2, 4 or 8) bytes at `MMIO_BASE + offset`.
    Read {
        /// Offset from the window's base (past the window: unclaimed).
        offset: u16,
        /// Access size selector: 1, 2, 4 or 8 bytes.
        size: u8,
    },
    /// A write of the low `size` bytes of `value` at `MMIO_BASE + offset`.
    Write {
        /// Offset from the window's base.
        offset: u16,
        /// Access size selector: 1, 2, 4 or 8 bytes.
        size: u8,
        /// The value, little-endian.
        value: u64,
    },
    /// The guest notifies `queue`, and the event loop serves the device (a few wake-ups).
    Notify {
        /// Queue index (any value: the transport must cope).
        queue: u8,
    },
    /// One of the device's host event sources fires (picked modulo their number).
    DeviceEvent {
        /// Which source.
        source: u8,
    },
    /// The guest writes `bytes` at `addr`.
    Poke {
        /// Guest-physical address.
        addr: u32,
        /// What to write.
        bytes: &'a [u8],
    },
    /// The guest writes descriptor `index` of `queue`'s table (as configured).
    Desc {
        /// Queue index.
        queue: u8,
        /// Descriptor index (modulo the queue size).
        index: u16,
        /// Buffer address.
        addr: u32,
        /// Buffer length.
        len: u32,
        /// NEXT 1, WRITE 2, INDIRECT 4.
        flags: u16,
        /// Next descriptor.
        next: u16,
    },
    /// The guest makes the chain at `head` available on `queue` and moves the index on.
    Publish {
        /// Queue index.
        queue: u8,
        /// Chain head.
        head: u16,
    },
    /// The whole initialization of virtio v1.2, 3.1.1, with rings at fixed places and the
    /// offered features masked by `features` (VERSION_1 always asked for).
    BringUp {
        /// Feature mask.
        features: u64,
    },
    /// Something happens on the device's host side (see each device's harness).
    Host {
        /// What.
        kind: u8,
        /// A number for it (a port, a connection).
        arg: u32,
        /// Bytes for it (a frame, stream data).
        bytes: &'a [u8],
    },
}

const OP_KINDS: u8 = 9;

impl<'a> Op<'a> {
    /// Reads one step; `Err` when the input is used up.
    pub fn take(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.is_empty() {
            return Err(arbitrary::Error::NotEnoughData);
        }
        let tag: u8 = u.arbitrary()?;
        Ok(match tag % OP_KINDS {
            0 => Op::Read {
                offset: u.arbitrary()?,
                size: u.arbitrary()?,
            },
            1 => Op::Write {
                offset: u.arbitrary()?,
                size: u.arbitrary()?,
                value: u.arbitrary()?,
            },
            2 => Op::Notify {
                queue: u.arbitrary()?,
            },
            3 => Op::DeviceEvent {
                source: u.arbitrary()?,
            },
            4 => Op::Poke {
                addr: u.arbitrary()?,
                bytes: take_bytes(u)?,
            },
            5 => Op::Desc {
                queue: u.arbitrary()?,
                index: u.arbitrary()?,
                addr: u.arbitrary()?,
                len: u.arbitrary()?,
                flags: u.arbitrary()?,
                next: u.arbitrary()?,
            },
            6 => Op::Publish {
                queue: u.arbitrary()?,
                head: u.arbitrary()?,
            },
            7 => Op::BringUp {
                features: u.arbitrary()?,
            },
            _ => Op::Host {
                kind: u.arbitrary()?,
                arg: u.arbitrary()?,
                bytes: take_bytes(u)?,
            },
        })
    }

    /// Appends the step as [`Op::take`] reads it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Read { offset, size } => {
                out.push(0);
                offset.put(out);
                size.put(out);
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                out.push(1);
                offset.put(out);
                size.put(out);
                value.put(out);
            }
            Op::Notify { queue } => {
                out.push(2);
                queue.put(out);
            }
            Op::DeviceEvent { source } => {
                out.push(3);
                source.put(out);
            }
            Op::Poke { addr, bytes } => {
                out.push(4);
                addr.put(out);
                put_bytes(out, bytes);
            }
            Op::Desc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                out.push(5);
                queue.put(out);
                index.put(out);
                addr.put(out);
                len.put(out);
                flags.put(out);
                next.put(out);
            }
            Op::Publish { queue, head } => {
                out.push(6);
                queue.put(out);
                head.put(out);
            }
            Op::BringUp { features } => {
                out.push(7);
                features.put(out);
            }
            Op::Host { kind, arg, bytes } => {
                out.push(8);
                kind.put(out);
                arg.put(out);
                put_bytes(out, bytes);
            }
        }
    }
}

/// The access size an `Op::Read`/`Op::Write` selector stands for.
pub(super) fn access_size(size: u8) -> usize {
    [4, 1, 2, 8][usize::from(size % 4)]
}
