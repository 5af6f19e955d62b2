//! The balloon's operations on a running VM ([`VmmHandle`]'s `balloon_*` methods):
//! Firecracker's `/balloon`, `/balloon/statistics` and `/balloon/hinting/*` after the start.

use std::sync::{Arc, Mutex};

use petrel_devices::virtio::balloon::{Balloon, BalloonConfig, BalloonStats, HintingStatus};
use petrel_devices::VirtioMmio;
use petrel_util::lock_ignoring_poison as lock;

use super::handle::VmmHandle;
use crate::virtio::DeviceHandle;
use crate::{Error, Result};

impl VmmHandle {
    /// The balloon's transport, or [`Error::NoSuchDevice`] for a VM built without one.
    fn balloon(&self) -> Result<&Arc<Mutex<VirtioMmio<Balloon>>>> {
        self.shared
            .virtio_devices
            .iter()
            .find_map(|d| match &d.handle {
                DeviceHandle::Balloon(b) => Some(b),
                _ => None,
            })
            .ok_or(Error::NoSuchDevice {
                what: "balloon",
                index: 0,
            })
    }

    /// The balloon's configuration now: its target and statistics interval as last set.
    pub fn balloon_config(&self) -> Result<BalloonConfig> {
        Ok(lock(self.balloon()?).device().config())
    }

    /// A new target size in MiB (Firecracker's `PATCH /balloon`); the guest gets a
    /// configuration-change interrupt and inflates or deflates towards it. A target larger
    /// than guest RAM is refused.
    pub fn update_balloon(&self, amount_mib: u32) -> Result<()> {
        let mut transport = lock(self.balloon()?);
        transport
            .device_mut()
            .set_target_mib(amount_mib)
            .map_err(Error::devices)?;
        transport.notify_config_change();
        self.remember_balloon(&transport);
        Ok(())
    }

    /// Keeps the snapshot's description of the machine at the balloon's configuration now
    /// (its target and statistics interval change while the VM runs).
    fn remember_balloon(&self, transport: &VirtioMmio<Balloon>) {
        lock(&self.shared.snap.machine).balloon = Some(transport.device().config());
    }

    /// The guest's memory statistics as last reported, with the balloon's target and actual
    /// size (Firecracker's `GET /balloon/statistics`); refused when statistics are off.
    pub fn balloon_stats(&self) -> Result<BalloonStats> {
        lock(self.balloon()?)
            .device()
            .stats()
            .map_err(Error::devices)
    }

    /// A new statistics polling interval in seconds (Firecracker's `PATCH
    /// /balloon/statistics`); statistics cannot be turned on or off after the start.
    pub fn update_balloon_stats(&self, interval_s: u16) -> Result<()> {
        let mut transport = lock(self.balloon()?);
        transport
            .device_mut()
            .set_stats_interval(interval_s)
            .map_err(Error::devices)?;
        self.remember_balloon(&transport);
        Ok(())
    }

    /// Starts a free page hinting run (Firecracker's `PATCH /balloon/hinting/start`): the guest
    /// gets a new command id (the device raises the configuration-change interrupt itself)
    /// and hints its free pages, which are freed on the host.
    pub fn start_balloon_hinting(&self, acknowledge_on_stop: bool) -> Result<()> {
        lock(self.balloon()?)
            .device_mut()
            .start_hinting(acknowledge_on_stop)
            .map_err(Error::devices)
    }

    /// The last hinting command of the host and of the guest (Firecracker's `GET
    /// /balloon/hinting/status`).
    pub fn balloon_hinting_status(&self) -> Result<HintingStatus> {
        lock(self.balloon()?)
            .device()
            .hinting_status()
            .map_err(Error::devices)
    }

    /// Ends a free page hinting run (Firecracker's `PATCH /balloon/hinting/stop`); the device
    /// raises the configuration-change interrupt itself.
    pub fn stop_balloon_hinting(&self) -> Result<()> {
        lock(self.balloon()?)
            .device_mut()
            .stop_hinting()
            .map_err(Error::devices)
    }
}
