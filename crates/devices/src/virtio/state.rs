//! The saved state of virtio devices, for snapshots: [`VirtioMmioState`] (the transport, its
//! queues and the device's [`DeviceState`]).
//!
//! The field names are the on-disk format (serde); they are chosen to last. A state is
//! restored into a transport and device built anew from the VM's configuration
//! ([`VirtioMmio::restore_state`](super::VirtioMmio::restore_state)): what the host gives the
//! device (the disk file, the tap, the vsock socket) is opened by the VMM, and the state
//! only checks that it is the same kind of thing the guest knew.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::balloon::BalloonStats;
use crate::rate_limiter::RateLimiterConfig;

/// One virtqueue: the driver's configuration and, once the device runs, the device's place in
/// the rings. Mirrors `virtio_queue::QueueState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The largest size the device offers for this queue (QueueNumMax).
    pub max_size: u16,
    /// The size the driver chose (QueueNum). A value the driver wrote above 65535, never a
    /// valid size, is saved as 0 (as invalid).
    pub size: u16,
    /// Whether the driver made the queue ready (QueueReady).
    pub ready: bool,
    /// Guest physical address of the descriptor table (QueueDesc).
    pub desc_table: u64,
    /// Guest physical address of the available ring (QueueDriver).
    pub avail_ring: u64,
    /// Guest physical address of the used ring (QueueDevice).
    pub used_ring: u64,
    /// The next available ring entry the device will take (free-running, modulo 2^16).
    pub next_avail: u16,
    /// The next used ring entry the device will fill (free-running, modulo 2^16).
    pub next_used: u16,
    /// Whether VIRTIO_F_EVENT_IDX is in use on this queue.
    pub event_idx_enabled: bool,
}

impl From<virtio_queue::QueueState> for QueueState {
    fn from(q: virtio_queue::QueueState) -> Self {
        QueueState {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

impl From<QueueState> for virtio_queue::QueueState {
    fn from(q: QueueState) -> Self {
        virtio_queue::QueueState {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

/// The saved state of a [`VirtioMmio`](super::VirtioMmio) transport and its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMmioState {
    /// The virtio device type (DeviceID: 1 net, 2 block, 4 entropy, 5 balloon, 19 socket).
    pub device_type: u32,
    /// The device status register (virtio v1.2, 2.1).
    pub status: u32,
    /// DeviceFeaturesSel: which 32 bits of the device's features the driver reads.
    pub device_features_sel: u32,
    /// DriverFeaturesSel: which 32 bits of its features the driver writes.
    pub driver_features_sel: u32,
    /// The features the driver accepted (valid once FEATURES_OK is set).
    pub driver_features: u64,
    /// QueueSel: the queue the queue registers address.
    pub queue_sel: u32,
    /// InterruptStatus: bit 0 used buffers, bit 1 configuration change; non-zero means the
    /// guest had not yet acknowledged an interrupt.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue of the device, by index.
    pub queues: Vec<QueueState>,
    /// The device's own state.
    pub device: DeviceState,
}

/// The state of the device behind a transport, by device type
/// ([`VirtioDevice::save_state`](super::VirtioDevice::save_state)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// A virtio-blk disk.
    Block(BlockState),
    /// A virtio-net interface.
    Net(NetState),
    /// A virtio-rng entropy source.
    Rng(RngState),
    /// A virtio-vsock socket device.
    Vsock(VsockState),
    /// A virtio-balloon device.
    Balloon(BalloonState),
}

impl DeviceState {
    /// The name of the device that saved this state, as [`VirtioDevice::name`](
    /// super::VirtioDevice::name) gives it (`"virtio-blk"`, ...).
    pub fn device_name(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "virtio-blk",
            DeviceState::Net(_) => "virtio-net",
            DeviceState::Rng(_) => "virtio-rng",
            DeviceState::Vsock(_) => "virtio-vsock",
            DeviceState::Balloon(_) => "virtio-balloon",
        }
    }
}

/// The saved state of a [`Block`](super::Block) device: what the disk must still be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Where the image was, if the VMM told the device ([`Block::set_path`](
    /// super::Block::set_path)); for messages only: the VMM reopens the disk by path.
    pub path: Option<PathBuf>,
    /// The image's size in bytes (the guest saw this in 512-byte sectors, rounded down).
    pub size_bytes: u64,
    /// Whether the disk is read-only (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// The device ID answered to GET_ID (at most 20 ASCII bytes).
    pub id: String,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The rate limiter's parameters (its buckets start full after a restore).
    pub rate_limiter: RateLimiterConfig,
}

/// The saved state of a [`Net`](super::Net) device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The tap the device was on; the VMM reopens this one or the one the user names instead.
    pub tap_name: String,
    /// The receive rate limiter's parameters (its buckets start full after a restore).
    pub rx_rate_limiter: RateLimiterConfig,
    /// The transmit rate limiter's parameters (its buckets start full after a restore).
    pub tx_rate_limiter: RateLimiterConfig,
}

/// The saved state of an [`Rng`](super::Rng) device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The rate limiter's parameters (its buckets start full after a restore).
    pub rate_limiter: RateLimiterConfig,
}

/// The saved state of a [`Vsock`](super::Vsock) device. Connections are not saved: after a
/// restore the device tells the guest its transport was reset (virtio v1.2, 5.10.6.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The host socket the device listened on; the VMM binds this one or the one the user
    /// names instead.
    pub uds_path: PathBuf,
}

/// The saved state of a [`Balloon`](super::balloon::Balloon) device (what Firecracker keeps):
/// its configuration space, statistics and hinting. The features and queues are the
/// transport's; the configured features come from the VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    /// The target, in 4 KiB pages (`num_pages`).
    pub num_pages: u32,
    /// The balloon's size as the driver last wrote it (`actual`), in 4 KiB pages.
    pub actual_pages: u32,
    /// `poison_val`, as the driver wrote it.
    pub poison_val: u32,
    /// Seconds between statistics updates (0: statistics off), as last set.
    pub stats_polling_interval_s: u16,
    /// The head of the driver's statistics buffer the device held, to give back on the next
    /// update.
    pub stats_desc_index: Option<u16>,
    /// The guest's statistics as it last reported them (the target and actual fields unused).
    pub latest_stats: BalloonStats,
    /// The host's free page hinting command (`free_page_hint_cmd_id`).
    pub hint_host_cmd: u32,
    /// The id of the last hinting run started.
    pub hint_last_cmd_id: u32,
    /// The guest's last hinting command.
    pub hint_guest_cmd: Option<u32>,
    /// Whether the guest's STOP is answered with DONE at once.
    pub hint_acknowledge_on_stop: bool,
}
