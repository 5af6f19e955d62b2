//! virtio-balloon (virtio v1.2, 5.5 Traditional Memory Balloon Device): the guest gives pages
//! back to the host (inflate) and takes them again (deflate), reports its memory statistics,
//! and hints or reports free pages, which the host then frees.
//!
//! The queues are inflate and deflate, then, each only when the driver accepted its feature,
//! statistics ([`F_STATS_VQ`]), free page hinting ([`F_FREE_PAGE_HINT`]) and free page
//! reporting ([`F_REPORTING`]): Linux sets up only the queues of the features it accepted, so
//! the index of the later ones depends on the negotiation. The configuration space is
//! `num_pages` (the target, set by the host), `actual` (the balloon's size, written by the
//! driver), `free_page_hint_cmd_id` and `poison_val` (written by the driver), each `le32`.
//!
//! Freeing host memory is the VMM's business, through a [`PageDiscarder`]: the device only
//! hands it page-aligned ranges it has checked to lie in guest RAM. Every wake-up is bounded
//! by the transport's budget ([`MAX_CHAINS_PER_WAKEUP`](crate::virtio::MAX_CHAINS_PER_WAKEUP))
//! and every chain by [`MAX_PFNS_PER_CHAIN`] or [`MAX_STAT_ENTRIES`]; nothing the guest needs
//! in order to make progress is rate limited. The statistics are asked for on a timerfd, one
//! of the device's event sources, every `stats_polling_interval_s` seconds.

mod device;
mod hinting;
mod queues;
mod stats;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use device::{Balloon, BalloonError, PageDiscarder};
pub use hinting::{HintingStatus, FREE_PAGE_HINT_DONE, FREE_PAGE_HINT_STOP};
pub use queues::MAX_PFNS_PER_CHAIN;
pub use stats::{BalloonMetrics, BalloonStats, MAX_STAT_ENTRIES, STAT_ENTRY_SIZE};

/// How a balloon device is set up: Firecracker's `Balloon` body (`PUT /balloon`, the config
/// file's `balloon` section), which a snapshot also keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// The target size in MiB: how much of its memory the guest is asked to give back.
    pub amount_mib: u32,
    /// VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest takes pages back from the balloon rather
    /// than run out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between two statistics updates; 0 turns statistics off (no statistics queue,
    /// VIRTIO_BALLOON_F_STATS_VQ is not offered).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// VIRTIO_BALLOON_F_FREE_PAGE_HINT: the host may ask for free-page hinting runs.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// VIRTIO_BALLOON_F_REPORTING: the guest reports pages it freed, and the host frees them.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// Feature bit: the driver must tell the host before it uses a deflated page (virtio v1.2,
/// 5.5.3). Not offered, as by Firecracker: a freed page simply faults in again.
pub const F_MUST_TELL_HOST: u32 = 0;
/// Feature bit: the statistics queue is present (offered when `stats_polling_interval_s` > 0).
pub const F_STATS_VQ: u32 = 1;
/// Feature bit: the guest deflates the balloon rather than run out of memory.
pub const F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: free page hinting, and its queue.
pub const F_FREE_PAGE_HINT: u32 = 3;
/// Feature bit: the driver reports `poison_val` (not offered).
pub const F_PAGE_POISON: u32 = 4;
/// Feature bit: free page reporting, and its queue.
pub const F_REPORTING: u32 = 5;

/// Size of each queue (Firecracker's).
pub const QUEUE_SIZE: u16 = 256;
/// The page the balloon counts in (virtio v1.2, 5.5.6: page frame numbers are in 4 KiB units
/// whatever the guest's page size).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Balloon pages in one MiB.
pub const PAGES_PER_MIB: u32 = 256;
/// Size of the configuration space: `num_pages`, `actual`, `free_page_hint_cmd_id`,
/// `poison_val`.
pub const CONFIG_SPACE_SIZE: usize = 16;

/// What each of the balloon's queues is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// The driver gives pages to the balloon.
    Inflate,
    /// The driver takes pages back.
    Deflate,
    /// The driver's memory statistics.
    Stats,
    /// Free page hinting.
    FreePageHint,
    /// Free page reporting.
    Reporting,
}

impl QueueRole {
    /// The queues, by index, for the features `features` (the offered ones give the queues
    /// the device has; the accepted ones the queues the driver set up, in that order).
    pub fn for_features(features: u64) -> Vec<QueueRole> {
        let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
        for (bit, role) in [
            (F_STATS_VQ, QueueRole::Stats),
            (F_FREE_PAGE_HINT, QueueRole::FreePageHint),
            (F_REPORTING, QueueRole::Reporting),
        ] {
            if features & (1 << bit) != 0 {
                roles.push(role);
            }
        }
        roles
    }
}
