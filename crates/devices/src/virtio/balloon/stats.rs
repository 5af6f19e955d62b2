//! The guest's memory statistics (virtio v1.2, 5.5.6.3 Memory Statistics) as the balloon keeps
//! them, and the device's metrics.
//!
//! The driver puts one device-readable buffer of `(le16 tag, le64 value)` entries (10 bytes
//! each, packed) into the statistics queue; the device keeps it and gives it back when it wants
//! fresh numbers, and the driver fills it again and puts it back.

use serde::{Deserialize, Serialize};

/// Size of one statistics entry: a `le16` tag and a `le64` value, packed.
pub const STAT_ENTRY_SIZE: usize = 10;
/// The most entries a statistics buffer may hold (Linux 6.12 sends 16); a longer buffer is
/// refused, which bounds the work one buffer costs.
pub const MAX_STAT_ENTRIES: usize = 256;

/// The balloon's view of the guest's memory, as `GET /balloon/statistics` answers it
/// (Firecracker's `BalloonStats`): the target and the guest's balloon size always; each of
/// the guest's statistics as it last reported it, absent until it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// The target size of the balloon, in 4 KiB pages.
    pub target_pages: u32,
    /// The balloon's size as the driver last reported it (`actual`), in 4 KiB pages.
    pub actual_pages: u32,
    /// The target size of the balloon, in MiB.
    pub target_mib: u32,
    /// The balloon's size as the driver last reported it, in MiB.
    pub actual_mib: u32,
    /// VIRTIO_BALLOON_S_SWAP_IN (tag 0): bytes swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// VIRTIO_BALLOON_S_SWAP_OUT (tag 1): bytes swapped out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// VIRTIO_BALLOON_S_MAJFLT (tag 2): major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// VIRTIO_BALLOON_S_MINFLT (tag 3): minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// VIRTIO_BALLOON_S_MEMFREE (tag 4): bytes of memory not used for anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// VIRTIO_BALLOON_S_MEMTOT (tag 5): bytes of memory the guest has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// VIRTIO_BALLOON_S_AVAIL (tag 6): bytes available for new work without swapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// VIRTIO_BALLOON_S_CACHES (tag 7): bytes of caches reclaimable without I/O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// VIRTIO_BALLOON_S_HTLB_PGALLOC (tag 8): successful hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// VIRTIO_BALLOON_S_HTLB_PGFAIL (tag 9): failed hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// VIRTIO_BALLOON_S_OOM_KILL (tag 10): OOM killer invocations (Linux 6.12 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// VIRTIO_BALLOON_S_ALLOC_STALL (tag 11): allocation stalls (Linux 6.12 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// VIRTIO_BALLOON_S_ASYNC_SCAN (tag 12): pages scanned by kswapd (Linux 6.12 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// VIRTIO_BALLOON_S_DIRECT_SCAN (tag 13): pages scanned directly (Linux 6.12 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// VIRTIO_BALLOON_S_ASYNC_RECLAIM (tag 14): pages reclaimed by kswapd (Linux 6.12 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// VIRTIO_BALLOON_S_DIRECT_RECLAIM (tag 15): pages reclaimed directly (Linux 6.12 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    /// The field a statistics tag (virtio v1.2, 5.5.6.3) fills; `None` for a tag this device
    /// does not know.
    fn field(&mut self, tag: u16) -> Option<&mut Option<u64>> {
        Some(match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return None,
        })
    }

    /// Takes the entries of a statistics buffer (whole 10-byte entries; the caller checked
    /// the length); returns how many had a tag this device does not know (they are skipped).
    pub(crate) fn update(&mut self, buf: &[u8]) -> u64 {
        let mut unknown = 0;
        for entry in buf.chunks_exact(STAT_ENTRY_SIZE) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..]);
            match self.field(tag) {
                Some(field) => *field = Some(u64::from_le_bytes(value)),
                None => unknown += 1,
            }
        }
        unknown
    }

    /// The guest's statistics only (the target and actual sizes zeroed), as a snapshot
    /// keeps them.
    pub(crate) fn guest_part(&self) -> BalloonStats {
        BalloonStats {
            target_pages: 0,
            actual_pages: 0,
            target_mib: 0,
            actual_mib: 0,
            ..*self
        }
    }
}

/// The balloon's counters: Firecracker's `balloon` metrics group under its names, then
/// Petrel's own for the hostile cases Firecracker only logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BalloonMetrics {
    /// Activations that failed (the statistics timer could not be armed).
    pub activate_fails: u64,
    /// Inflate requests (chains) served.
    pub inflate_count: u64,
    /// Statistics buffers received from the driver.
    pub stats_updates_count: u64,
    /// Statistics buffers refused (misplaced, too short, too long, not whole entries) and
    /// entries with a tag this device does not know.
    pub stats_update_fails: u64,
    /// Deflate requests (chains) served.
    pub deflate_count: u64,
    /// Wake-ups that ended in a guest fault (the device then needs a reset).
    pub event_fails: u64,
    /// Ranges the driver reported free (free page reporting).
    pub free_page_report_count: u64,
    /// Bytes freed on the host for reported ranges.
    pub free_page_report_freed: u64,
    /// Reported ranges refused (outside guest RAM, device-readable, no whole page) or whose
    /// discard failed.
    pub free_page_report_fails: u64,
    /// Ranges hinted free during a hinting run (free page hinting).
    pub free_page_hint_count: u64,
    /// Bytes freed on the host for hinted ranges.
    pub free_page_hint_freed: u64,
    /// Hinted ranges refused or whose discard failed, and malformed hinting commands.
    pub free_page_hint_fails: u64,
    /// Petrel: pages freed on the host for inflate requests.
    pub inflated_pages: u64,
    /// Petrel: page frame numbers in inflate requests that are not in guest RAM (not freed).
    pub inflate_refused_pages: u64,
    /// Petrel: inflate discards that failed on the host.
    pub inflate_discard_fails: u64,
    /// Petrel: inflate and deflate chains refused whole (device-writable buffers, buffers
    /// outside guest RAM, a length that is not whole page numbers, too many page numbers).
    pub bad_requests: u64,
}

impl BalloonMetrics {
    /// The counters by name, as [`VirtioDevice::counters`](crate::virtio::VirtioDevice::counters)
    /// gives them.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("activate_fails", self.activate_fails),
            ("inflate_count", self.inflate_count),
            ("stats_updates_count", self.stats_updates_count),
            ("stats_update_fails", self.stats_update_fails),
            ("deflate_count", self.deflate_count),
            ("event_fails", self.event_fails),
            ("free_page_report_count", self.free_page_report_count),
            ("free_page_report_freed", self.free_page_report_freed),
            ("free_page_report_fails", self.free_page_report_fails),
            ("free_page_hint_count", self.free_page_hint_count),
            ("free_page_hint_freed", self.free_page_hint_freed),
            ("free_page_hint_fails", self.free_page_hint_fails),
            ("inflated_pages", self.inflated_pages),
            ("inflate_refused_pages", self.inflate_refused_pages),
            ("inflate_discard_fails", self.inflate_discard_fails),
            ("bad_requests", self.bad_requests),
        ]
    }
}
