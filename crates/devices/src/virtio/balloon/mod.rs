//! virtio-balloon (virtio v1.2, 5.5 Traditional Memory Balloon Device): the guest gives pages
//! back to the host (inflate) and takes them again (deflate), reports its memory statistics,
//! and hints or reports free pages, which the host then frees.

use serde::{Deserialize, Serialize};

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
