//! The driver's register accesses: reads and writes of the control registers, and the queue
//! configuration they build until DRIVER_OK.

use super::regs::*;
use super::{QueueConfig, VirtioMmio, MAGIC_VALUE, MMIO_VERSION, VENDOR_ID};
use crate::virtio::{
    VirtioDevice, VirtioMemory, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK,
};

impl<D: VirtioDevice<M>, M: VirtioMemory> VirtioMmio<D, M> {
    /// The selected queue's configuration, if the driver may change it now: after
    /// FEATURES_OK, before DRIVER_OK (virtio v1.2, 3.1.1 step 7), and the queue exists.
    fn queue_to_configure(&mut self) -> Option<&mut QueueConfig> {
        let settable = self.status & STATUS_FEATURES_OK != 0
            && self.status & (STATUS_DRIVER_OK | STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0;
        let sel = usize::try_from(self.queue_sel).ok()?;
        if settable {
            self.queues.get_mut(sel)
        } else {
            None
        }
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    pub(super) fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC_VALUE => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self
                .guarded("device_type", |d| d.device_type())
                .unwrap_or(0),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = self.guarded("features", |d| d.features()).unwrap_or(0);
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: a non-existent region reads as length and base -1
            // (virtio v1.2, 4.2.2, SHMLenLow/High, SHMBaseLow/High).
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            // VIRTIO_F_RING_RESET is not offered.
            REG_QUEUE_RESET => 0,
            REG_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                self.stats.invalid_accesses += 1;
                0
            }
        }
    }

    pub(super) fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                // Only between DRIVER and FEATURES_OK (virtio v1.2, 3.1.1 steps 4-5).
                let settable = self.status & STATUS_DRIVER != 0
                    && self.status & (STATUS_FEATURES_OK | STATUS_FAILED) == 0;
                match (settable, self.driver_features_sel) {
                    (true, 0) => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    (true, 1) => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => self.stats.ignored_writes += 1,
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => self.configure_queue(|q| q.size = value),
            REG_QUEUE_READY => self.configure_queue(|q| q.ready = value == 1),
            REG_QUEUE_DESC_LOW => self.configure_queue(|q| q.desc = set_low(q.desc, value)),
            REG_QUEUE_DESC_HIGH => self.configure_queue(|q| q.desc = set_high(q.desc, value)),
            REG_QUEUE_DRIVER_LOW => self.configure_queue(|q| q.avail = set_low(q.avail, value)),
            REG_QUEUE_DRIVER_HIGH => self.configure_queue(|q| q.avail = set_high(q.avail, value)),
            REG_QUEUE_DEVICE_LOW => self.configure_queue(|q| q.used = set_low(q.used, value)),
            REG_QUEUE_DEVICE_HIGH => self.configure_queue(|q| q.used = set_high(q.used, value)),
            REG_QUEUE_NOTIFY => match usize::try_from(value)
                .ok()
                .and_then(|i| self.queue_evts.get(i))
            {
                // No ioeventfd caught this write: signal the same EventFd, so the work still
                // happens on the event loop.
                Some(evt) => {
                    let _ = evt.write(1);
                }
                None => self.stats.invalid_notifies += 1,
            },
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_SHM_SEL => {}
            _ => self.stats.invalid_accesses += 1,
        }
    }

    fn configure_queue(&mut self, f: impl FnOnce(&mut QueueConfig)) {
        match self.queue_to_configure() {
            Some(q) => f(q),
            None => self.stats.ignored_writes += 1,
        }
    }
}

fn set_low(v: u64, low: u32) -> u64 {
    (v & !0xffff_ffff) | u64::from(low)
}

fn set_high(v: u64, high: u32) -> u64 {
    (v & 0xffff_ffff) | (u64::from(high) << 32)
}
