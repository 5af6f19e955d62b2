//! A transport's snapshot: its registers, every queue and the device's own state saved
//! ([`VirtioMmio::save_state`]) and put back ([`VirtioMmio::restore_state`]).

use virtio_queue::QueueT;

use super::{QueueConfig, VirtioMmio};
use crate::virtio::state::{QueueState, VirtioMmioState};
use crate::virtio::{
    Error, VirtioDevice, VirtioMemory, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};

impl<D: VirtioDevice<M>, M: VirtioMemory> VirtioMmio<D, M> {
    /// The transport's registers, every queue (the driver's configuration and, once the
    /// device runs, its places in the rings) and the device's own state, for a snapshot.
    ///
    /// Take it with the VM paused and the event loop not running this device, so that no
    /// request is half-way through.
    pub fn save_state(&self) -> VirtioMmioState {
        let live: Vec<QueueState> = if self.activated {
            self.device
                .queues()
                .into_iter()
                .map(|q| QueueState::from(q.state()))
                .collect()
        } else {
            Vec::new()
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                let place = live.get(i);
                QueueState {
                    max_size: cfg.max_size,
                    // Above 65535 was never valid; 0 keeps it invalid.
                    size: u16::try_from(cfg.size).unwrap_or(0),
                    ready: cfg.ready,
                    desc_table: cfg.desc,
                    avail_ring: cfg.avail,
                    used_ring: cfg.used,
                    next_avail: place.map_or(0, |q| q.next_avail),
                    next_used: place.map_or(0, |q| q.next_used),
                    event_idx_enabled: place.is_some_and(|q| q.event_idx_enabled),
                }
            })
            .collect();
        VirtioMmioState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            queues,
            device: self.device.save_state(),
        }
    }

    /// Puts a saved `state` into this transport and its device, both built anew from the VM's
    /// configuration (the same device type, the same disk, MAC, CID), the way the guest left
    /// them; the guest does nothing.
    ///
    /// The state is checked as the driver's writes are: the status bits and their order, the
    /// accepted features against those the device offers, and, for a device that was running
    /// (DRIVER_OK without FAILED or DEVICE_NEEDS_RESET), each ready queue's size, alignment and
    /// rings inside guest RAM. Then the device checks and takes its own state
    /// ([`VirtioDevice::restore_state`]), is told the accepted features, and, if it was
    /// running, is activated with queues that resume at the saved ring positions, exactly as
    /// at the driver's DRIVER_OK write; every queue's notification `EventFd` is signalled once,
    /// so requests the guest made available meanwhile are served. Last, InterruptStatus and
    /// ConfigGeneration take their saved values, and if an interrupt was pending it is raised
    /// once.
    ///
    /// A transport in use is reset first. On an error (a bad state, the wrong device) nothing
    /// is raised and the transport and device are left reset, as after the driver wrote 0.
    pub fn restore_state(&mut self, state: &VirtioMmioState) -> Result<(), Error> {
        if self.status != 0 || self.activated {
            self.reset();
        }
        let result = self.try_restore(state);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn try_restore(&mut self, state: &VirtioMmioState) -> Result<(), Error> {
        let device = self.name;
        let invalid = |why: String| Error::InvalidState { device, why };
        let device_type = self.device.device_type();
        if state.device_type != device_type {
            return Err(invalid(format!(
                "the state is of device type {}, this device is of type {device_type}",
                state.device_type
            )));
        }
        if state.queues.len() != self.queues.len() {
            return Err(invalid(format!(
                "the state has {} queues, the device {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        for (i, (saved, cfg)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != cfg.max_size {
                return Err(invalid(format!(
                    "queue {i} had maximum size {}, the device offers {}",
                    saved.max_size, cfg.max_size
                )));
            }
        }
        let status = state.status;
        let known = STATUS_ACKNOWLEDGE
            | STATUS_DRIVER
            | STATUS_FEATURES_OK
            | STATUS_DRIVER_OK
            | STATUS_DEVICE_NEEDS_RESET
            | STATUS_FAILED;
        let has = |bit: u32| status & bit != 0;
        if status & !known != 0
            || (has(STATUS_DRIVER) && !has(STATUS_ACKNOWLEDGE))
            || (has(STATUS_FEATURES_OK) && !has(STATUS_DRIVER))
            || (has(STATUS_DRIVER_OK) && !has(STATUS_FEATURES_OK))
        {
            return Err(invalid(format!(
                "device status {status:#x} is not one the driver can reach"
            )));
        }
        if has(STATUS_FEATURES_OK) {
            let offered = self.device.features();
            let wanted = state.driver_features;
            if wanted & !offered != 0 || wanted & (1 << VIRTIO_F_VERSION_1) == 0 {
                return Err(invalid(format!(
                    "the driver's features {wanted:#x} are not a VERSION_1 subset of the \
                     device's {offered:#x}"
                )));
            }
        }
        let configs: Vec<QueueConfig> = state
            .queues
            .iter()
            .map(|q| QueueConfig {
                max_size: q.max_size,
                size: u32::from(q.size),
                ready: q.ready,
                desc: q.desc_table,
                avail: q.avail_ring,
                used: q.used_ring,
            })
            .collect();
        let running = has(STATUS_DRIVER_OK) && !has(STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET);
        let mut queues = Vec::new();
        if running {
            for (i, (cfg, saved)) in configs.iter().zip(&state.queues).enumerate() {
                let mut q = cfg
                    .build(&self.mem)
                    .map_err(|fault| invalid(format!("queue {i}: {fault}")))?;
                if cfg.ready {
                    q.set_next_avail(saved.next_avail);
                    q.set_next_used(saved.next_used);
                    q.set_event_idx(saved.event_idx_enabled);
                }
                queues.push(q);
            }
        }
        match self.guarded("restore_state", |d| d.restore_state(&state.device)) {
            Some(result) => result?,
            None => return Err(self.take_panic()),
        }
        if has(STATUS_FEATURES_OK) {
            let wanted = state.driver_features;
            if self
                .guarded("ack_features", |d| d.ack_features(wanted))
                .is_none()
            {
                return Err(self.take_panic());
            }
        }
        self.status = status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.queues = configs;
        if running {
            let (mem, interrupt) = (self.mem.clone(), self.interrupt.clone());
            match self.guarded("activate", |d| d.activate(mem, queues, interrupt)) {
                Some(result) => result?,
                None => return Err(self.take_panic()),
            }
            self.activated = true;
            for evt in &self.queue_evts {
                let _ = evt.write(1);
            }
        }
        self.interrupt
            .restore(state.interrupt_status, state.config_generation);
        Ok(())
    }
}
