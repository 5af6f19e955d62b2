//! What the balloon does with each chain of its queues: inflate (free the pages named),
//! deflate (nothing to free), statistics (keep the buffer, read the numbers) and free page
//! reporting (free the ranges). Free page hinting is in `hinting.rs`.
//!
//! Every chain is the guest's and is checked before use: a chain in the wrong direction or
//! outside guest RAM is returned untouched and counted, a page or range outside guest RAM is
//! never freed, and the work per chain is bounded ([`MAX_PFNS_PER_CHAIN`],
//! [`MAX_STAT_ENTRIES`]).

use vm_memory::GuestMemory;

use super::stats::{BalloonMetrics, BalloonStats, MAX_STAT_ENTRIES, STAT_ENTRY_SIZE};
use super::{PageDiscarder, PAGE_SHIFT, PAGE_SIZE};
use crate::virtio::chain::{self, ChainBuffers, Step};
use crate::virtio::in_ram;

/// The most page frame numbers one inflate or deflate chain may carry: Linux's
/// VIRTIO_BALLOON_ARRAY_PFNS_MAX, what its driver sends at most. A longer chain is refused.
pub const MAX_PFNS_PER_CHAIN: usize = 256;

/// Size of a page frame number in an inflate or deflate buffer (`le32`).
const PFN_SIZE: u64 = 4;

/// A chain that is returned with nothing written; `bytes` were read from the guest.
fn done(bytes: u64) -> Step {
    Step::Done { len: 0, bytes }
}

/// Whether an inflate or deflate chain is well-formed: device-readable buffers only, inside
/// guest RAM, whole page frame numbers, at most [`MAX_PFNS_PER_CHAIN`] of them.
fn pfn_chain_ok(bufs: &ChainBuffers) -> bool {
    let len = bufs.readable_len();
    bufs.writable.is_empty()
        && !bufs.outside_ram
        && len % PFN_SIZE == 0
        && len <= MAX_PFNS_PER_CHAIN as u64 * PFN_SIZE
}

/// An inflate chain: reads its page frame numbers, drops duplicates and those outside guest
/// RAM (counted), coalesces the rest into runs of consecutive pages and frees each run.
pub(super) fn inflate<M: GuestMemory>(
    bufs: &ChainBuffers,
    mem: &M,
    discarder: &dyn PageDiscarder,
    pfns: &mut Vec<u32>,
    metrics: &mut BalloonMetrics,
) -> Step {
    if !pfn_chain_ok(bufs) {
        metrics.bad_requests += 1;
        return done(0);
    }
    let len = bufs.readable_len();
    let mut raw = [0u8; MAX_PFNS_PER_CHAIN * PFN_SIZE as usize];
    // `len <= raw.len()` (checked above).
    let raw = &mut raw[..len as usize];
    if !chain::gather(mem, &bufs.readable, 0, raw) {
        metrics.bad_requests += 1;
        return done(0);
    }
    metrics.inflate_count += 1;
    pfns.clear();
    pfns.extend(
        raw.chunks_exact(PFN_SIZE as usize)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    pfns.sort_unstable();
    pfns.dedup();
    let mut run: Option<(u64, u64)> = None;
    for &pfn in pfns.iter() {
        let page = u64::from(pfn);
        if !in_ram(mem, page << PAGE_SHIFT, PAGE_SIZE) {
            metrics.inflate_refused_pages += 1;
            continue;
        }
        run = match run {
            Some((first, n)) if first + n == page => Some((first, n + 1)),
            Some(previous) => {
                free_pages(previous, discarder, metrics);
                Some((page, 1))
            }
            None => Some((page, 1)),
        };
    }
    if let Some(last) = run {
        free_pages(last, discarder, metrics);
    }
    done(len)
}

/// Frees `count` pages from page frame `first` (all in guest RAM).
fn free_pages((first, count): (u64, u64), discarder: &dyn PageDiscarder, m: &mut BalloonMetrics) {
    match discarder.discard(first << PAGE_SHIFT, count << PAGE_SHIFT) {
        Ok(()) => m.inflated_pages += count,
        Err(_) => m.inflate_discard_fails += 1,
    }
}

/// A deflate chain: the guest takes the pages back, and they fault in again on their next
/// access, so there is nothing to do but count it (VIRTIO_BALLOON_F_MUST_TELL_HOST is not
/// offered).
pub(super) fn deflate(bufs: &ChainBuffers, metrics: &mut BalloonMetrics) -> Step {
    if !pfn_chain_ok(bufs) {
        metrics.bad_requests += 1;
    } else {
        metrics.deflate_count += 1;
    }
    done(0)
}

/// A statistics buffer: reads the numbers into `latest` when the buffer is well-formed
/// (device-readable, inside guest RAM, 1 to [`MAX_STAT_ENTRIES`] whole entries) and holds
/// the chain either way: the device gives it back when it wants the next numbers, which is
/// how the driver learns to send them. The chain held before, if any (a driver that sends a
/// second buffer), goes into `to_return`.
pub(super) fn stats<M: GuestMemory>(
    bufs: &ChainBuffers,
    mem: &M,
    latest: &mut BalloonStats,
    held: &mut Option<u16>,
    to_return: &mut Vec<u16>,
    metrics: &mut BalloonMetrics,
) -> Step {
    metrics.stats_updates_count += 1;
    if let Some(previous) = held.replace(bufs.head) {
        to_return.push(previous);
    }
    let len = bufs.readable_len();
    let max = (MAX_STAT_ENTRIES * STAT_ENTRY_SIZE) as u64;
    if !bufs.writable.is_empty()
        || bufs.outside_ram
        || len == 0
        || len > max
        || len % STAT_ENTRY_SIZE as u64 != 0
    {
        metrics.stats_update_fails += 1;
        return Step::Hold;
    }
    let mut raw = [0u8; MAX_STAT_ENTRIES * STAT_ENTRY_SIZE];
    // `len <= max == raw.len()`.
    let raw = &mut raw[..len as usize];
    if !chain::gather(mem, &bufs.readable, 0, raw) {
        metrics.stats_update_fails += 1;
        return Step::Hold;
    }
    metrics.stats_update_fails += latest.update(raw);
    Step::Hold
}

/// A free page reporting chain: each device-writable buffer is a range of free pages, freed
/// when it lies in guest RAM; a device-readable buffer is a mix-up and is only counted.
pub(super) fn report<M: GuestMemory>(
    bufs: &ChainBuffers,
    mem: &M,
    discarder: &dyn PageDiscarder,
    metrics: &mut BalloonMetrics,
) -> Step {
    metrics.free_page_report_fails += bufs.readable.len() as u64;
    for seg in &bufs.writable {
        metrics.free_page_report_count += 1;
        match free_range(mem, discarder, seg.addr, u64::from(seg.len)) {
            Some(freed) => metrics.free_page_report_freed += freed,
            None => metrics.free_page_report_fails += 1,
        }
    }
    done(0)
}

/// Frees the whole pages of `[addr, addr + len)`; returns the bytes freed, or `None` when the
/// range holds no whole page, is not in guest RAM, or the discard failed.
pub(super) fn free_range<M: GuestMemory>(
    mem: &M,
    discarder: &dyn PageDiscarder,
    addr: u64,
    len: u64,
) -> Option<u64> {
    let start = addr.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    let end = addr.checked_add(len)? & !(PAGE_SIZE - 1);
    if end <= start {
        return None;
    }
    let len = end - start;
    if !in_ram(mem, start, len) {
        return None;
    }
    discarder.discard(start, len).ok()?;
    Some(len)
}
