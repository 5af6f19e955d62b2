//! The virtio-mmio transport, version 2 (virtio v1.2, 4.2 Virtio Over MMIO).
//!
//! [`VirtioMmio`] owns a 4 KiB window ([`MMIO_WINDOW_SIZE`]) on the MMIO bus: the control
//! registers at `0x000..0x100` and the device configuration space from `0x100`. It runs the
//! device status state machine (virtio v1.2, 2.1 and 3.1.1), negotiates features, keeps each
//! queue's configuration until the driver sets DRIVER_OK, then builds the [`Queue`]s and hands
//! them to the [`VirtioDevice`].
//!
//! Registers are 32 bits wide and must be accessed with aligned 32-bit accesses (virtio v1.2,
//! 4.2.2.2); anything else is ignored (reads return 0) and counted. The configuration space may
//! be accessed with any width.
//!
//! Wiring, for a window at `base` with interrupt line `gsi`:
//! - insert the device on the MMIO bus at `BusRange::new(base, MMIO_WINDOW_SIZE)`;
//! - register [`VirtioMmio::interrupt_evt`] as a KVM irqfd for `gsi`;
//! - register each [`VirtioMmio::queue_events`]`[i]` as a KVM ioeventfd at
//!   `base + QUEUE_NOTIFY_OFFSET`, 4 bytes, datamatch `i`;
//! - add the same `Arc<Mutex<VirtioMmio<_>>>` to the event manager, which then calls the device
//!   on queue notifications and on the device's own event sources;
//! - tell Linux about it on the command line: `virtio_mmio.device=4K@0x<base>:<gsi>`.
//!
//! A notify written to QueueNotify while no ioeventfd is registered reaches
//! [`BusDevice::write`], which signals the same `EventFd`: the work still happens on the event
//! loop, never on the vCPU thread.
//!
//! Every call into the device (queue and event processing on the event loop; activation, reset,
//! feature and configuration accesses on a vCPU's register access) runs under
//! [`std::panic::catch_unwind`]. A device that panics is put into DEVICE_NEEDS_RESET as for a
//! guest fault, with [`Error::VirtioDevicePanic`] as [`VirtioMmio::last_fault`], and counted in
//! [`VirtioMmioStats::device_panics`]; the panic never unwinds into the event loop or the vCPU
//! loop, and the transport's mutex is not poisoned. The device is not called again (but for
//! configuration reads) until the driver resets it.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use crate::virtio::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::Error;
use super::{
    drain_eventfd, in_ram, new_eventfd, GuestFault, Interrupt, Processed, VirtioDevice,
    VirtioInterrupt, VirtioMemory, MAX_QUEUES, MAX_QUEUE_SIZE, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use crate::{BusDevice, BusOutcome};

mod access;
mod snapshot;

/// Size of a virtio-mmio window: the registers and the configuration space (virtio v1.2, 4.2.2;
/// Linux's `virtio_mmio.device=4K@...`).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VMM registers the queue ioeventfds (virtio
/// v1.2, 4.2.2 MMIO Device Register Layout).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device configuration space (virtio v1.2, 4.2.2, "Config: 0x100+").
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// The kernel command-line argument that announces a virtio-mmio window at `base` with
/// interrupt line `gsi` to Linux (Documentation/admin-guide/kernel-parameters.txt,
/// `virtio_mmio.device=<size>@<baseaddr>:<irq>`).
///
/// ```
/// use petrel_devices::virtio::mmio::cmdline_device;
/// assert_eq!(cmdline_device(0xd000_1000, 5), "virtio_mmio.device=4K@0xd0001000:5");
/// ```
pub fn cmdline_device(base: u64, gsi: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{gsi}")
}

/// "virt" in little-endian (virtio v1.2, 4.2.2, MagicValue).
const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version 2: the virtio 1.x register layout, not the legacy one (virtio v1.2, 4.2.2, Version).
const MMIO_VERSION: u32 = 2;
/// Subsystem vendor ID; nothing in Linux looks at it.
const VENDOR_ID: u32 = 0;

pub mod regs;

/// Event-manager data values at or above this name a device event source (token = data - base);
/// below it, a queue index.
const DEVICE_EVENT_BASE: u32 = 0x1_0000;
/// Event-manager data value of the transport's own "watch the parked sources again" event.
const REARM_EVENT: u32 = 0x0_ffff;

/// Alignment of the descriptor table, available ring and used ring (virtio v1.2, 2.7 Split
/// Virtqueues, "Queue Part Alignment": 16, 2 and 4 bytes).
const DESC_ALIGN: u64 = 16;
const AVAIL_ALIGN: u64 = 2;
const USED_ALIGN: u64 = 4;

/// Counters of a [`VirtioMmio`], for what a guest can repeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioMmioStats {
    /// Register accesses that were not aligned 32-bit accesses, or hit no register, or read a
    /// write-only / wrote a read-only register.
    pub invalid_accesses: u64,
    /// Writes the current device status does not allow (feature bits after FEATURES_OK, queue
    /// setup after DRIVER_OK, a queue that does not exist, config space writes).
    pub ignored_writes: u64,
    /// Status writes that skipped a step or cleared a bit without a reset.
    pub invalid_status_writes: u64,
    /// FEATURES_OK writes refused (VERSION_1 not accepted, or bits the device does not offer).
    pub features_refused: u64,
    /// QueueNotify writes naming a queue that does not exist.
    pub invalid_notifies: u64,
    /// Queue notifications while the device was not running (before DRIVER_OK, after FAILED or
    /// DEVICE_NEEDS_RESET).
    pub notifies_while_stopped: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub needs_reset: u64,
    /// Device resets (status written 0).
    pub resets: u64,
    /// Queue or device event fds the event manager refused to watch.
    pub event_registration_failures: u64,
    /// Wake-ups that spent their budget with work left, after which the transport signalled
    /// the queue's notification again (one per queue).
    pub rearms: u64,
    /// Panics of the device caught by the transport (each put it into DEVICE_NEEDS_RESET).
    pub device_panics: u64,
    /// Configuration-change interrupts raised by [`VirtioMmio::notify_config_change`].
    pub config_changes: u64,
}

/// One queue's configuration as the driver wrote it, before DRIVER_OK.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    /// As written: checked only at DRIVER_OK.
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// Builds the queue the driver configured, checking everything a `Queue` later relies on.
    fn build<M: GuestMemory>(&self, mem: &M) -> Result<Queue, GuestFault> {
        let mut q = Queue::new(self.max_size).map_err(|_| GuestFault::QueueConfig {
            what: "the device's maximum queue size",
        })?;
        if !self.ready {
            return Ok(q);
        }
        let size = u16::try_from(self.size)
            .ok()
            .filter(|s| *s != 0 && *s <= self.max_size && s.is_power_of_two())
            .ok_or(GuestFault::QueueConfig {
                what: "QueueNum is zero, not a power of two, or above QueueNumMax",
            })?;
        if self.desc % DESC_ALIGN != 0
            || self.avail % AVAIL_ALIGN != 0
            || self.used % USED_ALIGN != 0
        {
            return Err(GuestFault::QueueConfig {
                what: "a ring is misaligned",
            });
        }
        let n = u64::from(size);
        // Sizes of the three parts (virtio v1.2, 2.7 Split Virtqueues: 16 * size, 6 + 2 * size,
        // 6 + 8 * size bytes).
        let parts = [
            (self.desc, 16 * n),
            (self.avail, 6 + 2 * n),
            (self.used, 6 + 8 * n),
        ];
        if !parts.iter().all(|&(addr, len)| in_ram(mem, addr, len)) {
            return Err(GuestFault::QueueConfig {
                what: "a ring is outside guest RAM",
            });
        }
        let bad = |_| GuestFault::QueueConfig {
            what: "the queue refused its configuration",
        };
        q.try_set_size(size).map_err(bad)?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(bad)?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(bad)?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(bad)?;
        q.set_ready(true);
        Ok(q)
    }
}

/// A virtio device behind a virtio-mmio window. See the [module docs](self) for the wiring.
pub struct VirtioMmio<D: VirtioDevice<M>, M: VirtioMemory = GuestMemoryMmap> {
    device: D,
    /// The device's name, taken once: errors name the device even when it has panicked.
    name: &'static str,
    mem: M,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    activated: bool,
    last_fault: Option<Error>,
    stats: VirtioMmioStats,
    /// Device event sources taken out of the event loop while the device is stopped, so that
    /// a level-triggered one (a timer nobody reads) cannot keep the loop spinning.
    parked: Vec<Events>,
    /// Written on reset when sources are parked, so the event loop watches them again.
    rearm_evt: EventFd,
}

impl<D: VirtioDevice<M>, M: VirtioMemory> fmt::Debug for VirtioMmio<D, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioMmio")
            .field("device", &self.device)
            .field("status", &format_args!("{:#x}", self.status))
            .field(
                "driver_features",
                &format_args!("{:#x}", self.driver_features),
            )
            .field("activated", &self.activated)
            .field("last_fault", &self.last_fault)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<D: VirtioDevice<M>, M: VirtioMemory> VirtioMmio<D, M> {
    /// Puts `device` behind a new transport that gives it `mem` (the guest's RAM: any
    /// vm-memory [`GuestMemory`], e.g. `GuestRam::memory().clone()`) at
    /// activation, and raises its interrupt through a new irqfd `EventFd`.
    ///
    /// Creates the interrupt `EventFd` and one `EventFd` per queue. Fails if the device
    /// declares no queue or a maximum queue size that is zero, not a power of two, or above
    /// [`MAX_QUEUE_SIZE`], or if an `EventFd` cannot be created.
    pub fn new(device: D, mem: M) -> Result<Self, Error> {
        Self::with_interrupt(device, mem, Box::new(new_eventfd()?))
    }

    /// Like [`new`](Self::new), but raises interrupts through `trigger` (an MSI-X vector, a
    /// test's recorder) instead of an irqfd `EventFd`.
    pub fn with_interrupt(
        device: D,
        mem: M,
        trigger: Box<dyn VirtioInterrupt>,
    ) -> Result<Self, Error> {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() {
            return Err(Error::VirtioQueueSize {
                device: device.name(),
                queue: 0,
                size: 0,
            });
        }
        if sizes.len() > MAX_QUEUES {
            return Err(Error::VirtioQueueCount {
                device: device.name(),
                count: sizes.len(),
            });
        }
        for (i, &size) in sizes.iter().enumerate() {
            if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
                return Err(Error::VirtioQueueSize {
                    device: device.name(),
                    queue: i,
                    size,
                });
            }
        }
        let queues: Vec<QueueConfig> = sizes.iter().map(|&s| QueueConfig::new(s)).collect();
        let queue_evts = queues
            .iter()
            .map(|_| new_eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        let rearm_evt = new_eventfd()?;
        Ok(VirtioMmio {
            rearm_evt,
            name: device.name(),
            device,
            mem,
            interrupt: Interrupt::with_trigger(trigger),
            queue_evts,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            activated: false,
            last_fault: None,
            parked: Vec::new(),
            stats: VirtioMmioStats::default(),
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (e.g. for host-side configuration between runs).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device as its concrete type `T`, through [`VirtioDevice::as_any_mut`]: how a VMM
    /// holding `VirtioMmio<Box<dyn VirtioDevice>>` reaches e.g.
    /// [`Block::set_rate_limiter`](super::Block::set_rate_limiter). `None` when the device is
    /// not a `T` (or does not offer `as_any_mut`).
    pub fn device_as_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.device.as_any_mut()?.downcast_mut::<T>()
    }

    /// Tells the driver that the device's configuration space changed (after e.g.
    /// [`Block::replace_backing_file`](super::Block::replace_backing_file)): ConfigGeneration
    /// moves on, and once the driver has set DRIVER_OK the transport sets InterruptStatus bit 1
    /// (configuration change) and raises the interrupt (virtio v1.2, 4.2.2 MMIO Device Register
    /// Layout: InterruptStatus, ConfigGeneration; 2.5.2 Configuration change notification).
    /// Before DRIVER_OK only the generation moves: the driver is still reading the
    /// configuration and checks the generation as it does. Returns whether an interrupt was
    /// raised.
    pub fn notify_config_change(&mut self) -> bool {
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
            self.stats.config_changes += 1;
            true
        } else {
            self.interrupt.bump_config_generation();
            false
        }
    }

    /// The interrupt `EventFd`: register it with KVM as an irqfd for the window's GSI. `None`
    /// when the transport was made [`with_interrupt`](Self::with_interrupt) something else.
    pub fn interrupt_evt(&self) -> Option<&EventFd> {
        self.interrupt.eventfd()
    }

    /// The interrupt line and its status register.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// One `EventFd` per queue: register `queue_events()[i]` with KVM as an ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET`, length 4, datamatch `i`.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the device was activated (DRIVER_OK) and is not stopped by FAILED or
    /// DEVICE_NEEDS_RESET.
    pub fn is_running(&self) -> bool {
        self.activated && self.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0
    }

    /// Why the device last entered DEVICE_NEEDS_RESET, if it did since the last reset.
    pub fn last_fault(&self) -> Option<&Error> {
        self.last_fault.as_ref()
    }

    /// The transport's counters.
    pub fn stats(&self) -> VirtioMmioStats {
        self.stats
    }

    /// The error a caught panic left in [`last_fault`](Self::last_fault), taken out.
    fn take_panic(&mut self) -> Error {
        self.last_fault.take().unwrap_or(Error::VirtioDevicePanic {
            device: self.name,
            during: "restore_state",
            message: String::new(),
        })
    }

    /// Handles a notification of queue `index`: clears its `EventFd` and lets the device
    /// process the queue. Call it when `queue_events()[index]` is readable (the event-manager
    /// subscriber does).
    pub fn process_queue_event(&mut self, index: usize) {
        let Some(evt) = self.queue_evts.get(index) else {
            self.stats.invalid_notifies += 1;
            return;
        };
        drain_eventfd(evt);
        if !self.is_running() {
            self.stats.notifies_while_stopped += 1;
            return;
        }
        if let Some(result) = self.guarded("process_queue", |d| d.process_queue(index)) {
            self.handle_result(result);
        }
    }

    /// Handles the device event source named `token` (see [`VirtioDevice::event_sources`]).
    ///
    /// Devices get their events even before activation (a tap can become readable any time);
    /// not after DEVICE_NEEDS_RESET or FAILED.
    pub fn process_device_event(&mut self, token: u32) {
        if self.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0 {
            return;
        }
        if let Some(result) = self.guarded("process_event", |d| d.process_event(token)) {
            self.handle_result(result);
        }
    }

    /// Runs `f` on the device, catching a panic. A panic puts the device into
    /// DEVICE_NEEDS_RESET with [`Error::VirtioDevicePanic`] (and a configuration interrupt if
    /// DRIVER_OK is set), is counted, and gives `None`; it never unwinds further.
    fn guarded<R>(&mut self, during: &'static str, f: impl FnOnce(&mut D) -> R) -> Option<R> {
        let device = &mut self.device;
        // The device may be left half-updated by the panic: it is stopped until the driver
        // resets it, and its state is only memory-safe Rust data, so nothing observes a broken
        // invariant that could cause harm.
        match panic::catch_unwind(AssertUnwindSafe(|| f(device))) {
            Ok(r) => Some(r),
            Err(payload) => {
                let message = petrel_util::panic_message(payload.as_ref());
                // Dropping a payload can itself panic; such a payload is leaked instead.
                if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                    std::mem::forget(again);
                }
                self.stats.device_panics += 1;
                self.set_needs_reset(Error::VirtioDevicePanic {
                    device: self.name,
                    during,
                    message,
                });
                None
            }
        }
    }

    fn handle_result(&mut self, result: Result<Processed, Error>) {
        let done = match result {
            Ok(done) => done,
            Err(e) => return self.set_needs_reset(e),
        };
        if done.interrupt {
            self.interrupt.signal_used_queue();
        }
        // The budget ran out with work left: signal the queue's EventFd. The event loop
        // watches it level-triggered, so the next epoll_wait reports it again, together with
        // (not before) whatever else became ready meanwhile.
        for index in done.rearmed_queues() {
            match self.queue_evts.get(index).map(|evt| evt.write(1)) {
                Some(Ok(())) => self.stats.rearms += 1,
                Some(Err(_)) => self.stats.event_registration_failures += 1,
                None => self.stats.invalid_notifies += 1,
            }
        }
    }

    /// Stops the device until the driver resets it, and tells the driver (virtio v1.2, 2.1.2:
    /// with DRIVER_OK set, a configuration change notification follows DEVICE_NEEDS_RESET).
    fn set_needs_reset(&mut self, why: Error) {
        self.last_fault = Some(why);
        if self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.stats.needs_reset += 1;
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt.signal_status_change();
        }
    }

    /// Device reset (status written 0): the device and every queue go back to their initial
    /// state (virtio v1.2, 2.4 Device Reset).
    fn reset(&mut self) {
        self.stats.resets += 1;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.activated = false;
        self.last_fault = None;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        for evt in &self.queue_evts {
            drain_eventfd(evt);
        }
        self.interrupt.clear();
        if !self.parked.is_empty() && self.rearm_evt.write(1).is_err() {
            self.stats.event_registration_failures += 1;
        }
        // Last, so that a panic here leaves DEVICE_NEEDS_RESET set: the device stays out of
        // service until a reset gets through.
        self.guarded("reset", |d| d.reset());
    }

    /// A driver write of the status register (virtio v1.2, 3.1.1 Driver Requirements: Device
    /// Initialization).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
        if value & STATUS_FAILED != 0 {
            // The driver gave up (at any point); the device stops until a reset.
            self.status |= STATUS_FAILED;
            return;
        }
        let new = value & 0xff & !STATUS_DEVICE_NEEDS_RESET;
        let kept = self.status & STATUS_DEVICE_NEEDS_RESET;
        let old = self.status & !STATUS_DEVICE_NEEDS_RESET;
        if new & old != old {
            // Bits are only ever added; clearing one needs a reset.
            self.stats.invalid_status_writes += 1;
            return;
        }
        let added = new & !old;
        // Each step needs the one before it, in the same or an earlier write.
        let steps_in_order = (added & STATUS_DRIVER == 0 || new & STATUS_ACKNOWLEDGE != 0)
            && (added & STATUS_FEATURES_OK == 0 || new & STATUS_DRIVER != 0)
            && (added & STATUS_DRIVER_OK == 0 || new & STATUS_FEATURES_OK != 0);
        let known = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if !steps_in_order || added & !known != 0 {
            self.stats.invalid_status_writes += 1;
            return;
        }
        let mut new = new;
        if added & STATUS_FEATURES_OK != 0 && !self.accept_features() {
            // Refused: FEATURES_OK stays clear, and the driver sees it when it reads the status
            // back (virtio v1.2, 3.1.1 step 6).
            self.stats.features_refused += 1;
            new &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        }
        // DEVICE_NEEDS_RESET as it is now: the device may have panicked just above.
        let kept = kept | self.status & STATUS_DEVICE_NEEDS_RESET;
        self.status = new | kept;
        if new & STATUS_DRIVER_OK != 0 && added & STATUS_DRIVER_OK != 0 && kept == 0 {
            if let Err(e) = self.activate() {
                self.set_needs_reset(e);
            }
        }
    }

    /// Checks the driver's features: it must accept VIRTIO_F_VERSION_1 (virtio v1.2, 6.1: a
    /// device MAY fail to operate further if it is not accepted; this one refuses legacy
    /// drivers) and nothing the device does not offer (virtio v1.2, 2.2.1).
    fn accept_features(&mut self) -> bool {
        let Some(offered) = self.guarded("features", |d| d.features()) else {
            return false;
        };
        let wanted = self.driver_features;
        if wanted & !offered != 0 || wanted & (1 << VIRTIO_F_VERSION_1) == 0 {
            return false;
        }
        self.guarded("ack_features", |d| d.ack_features(wanted))
            .is_some()
    }

    fn activate(&mut self) -> Result<(), Error> {
        let device = self.name;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                cfg.build(&self.mem).map_err(|fault| Error::VirtioFault {
                    device,
                    queue: i,
                    fault,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (mem, interrupt) = (self.mem.clone(), self.interrupt.clone());
        let Some(activated) = self.guarded("activate", |d| d.activate(mem, queues, interrupt))
        else {
            // The panic put the device into DEVICE_NEEDS_RESET already.
            return Ok(());
        };
        activated?;
        self.activated = true;
        // Look at every queue once: a driver may have made buffers available (an rx ring
        // filled) before DRIVER_OK, whose notification was dropped then.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }
}

impl<D: VirtioDevice<M>, M: VirtioMemory> BusDevice for VirtioMmio<D, M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            match offset.checked_add(data.len() as u64) {
                Some(end) if end <= MMIO_WINDOW_SIZE => {
                    let offset = offset - CONFIG_SPACE_OFFSET;
                    if self
                        .guarded("read_config", |d| d.read_config(offset, data))
                        .is_none()
                    {
                        data.fill(0);
                    }
                }
                _ => {
                    self.stats.invalid_accesses += 1;
                    data.fill(0);
                }
            }
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset % 4 == 0 => *word = self.read_register(offset).to_le_bytes(),
            _ => {
                self.stats.invalid_accesses += 1;
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        if offset >= CONFIG_SPACE_OFFSET {
            let fits = offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= MMIO_WINDOW_SIZE);
            // Config writes are only meaningful once the driver knows the device.
            if !fits
                || self.status & STATUS_DRIVER == 0
                || self.guarded("write_config", |d| {
                    d.write_config(offset - CONFIG_SPACE_OFFSET, data)
                }) != Some(true)
            {
                self.stats.ignored_writes += 1;
            }
            return BusOutcome::Continue;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => self.stats.invalid_accesses += 1,
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// How a device's event source is watched: readable, edge-triggered if it asks for it, with
/// its token offset by [`DEVICE_EVENT_BASE`] so it cannot be taken for a queue.
fn source_events(src: &crate::virtio::EventSource) -> Events {
    let mut set = EventSet::IN;
    if src.edge_triggered {
        set |= EventSet::EDGE_TRIGGERED;
    }
    Events::with_data_raw(src.fd, DEVICE_EVENT_BASE.saturating_add(src.token), set)
}

impl<D: VirtioDevice<M>, M: VirtioMemory> MutEventSubscriber for VirtioMmio<D, M> {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::with_data(
                &self.rearm_evt,
                REARM_EVENT,
                EventSet::IN,
            ))
            .is_err()
        {
            self.stats.event_registration_failures += 1;
        }
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let Ok(data) = u32::try_from(i) else { break };
            if ops.add(Events::with_data(evt, data, EventSet::IN)).is_err() {
                self.stats.event_registration_failures += 1;
            }
        }
        let sources = self
            .guarded("event_sources", |d| d.event_sources())
            .unwrap_or_default();
        for src in sources {
            if ops.add(source_events(&src)).is_err() {
                self.stats.event_registration_failures += 1;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let stopped = self.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0;
        if !stopped {
            // The driver reset the device since sources were parked: watch them again.
            for parked in self.parked.drain(..) {
                if ops.add(parked).is_err() {
                    self.stats.event_registration_failures += 1;
                }
            }
        }
        let data = events.data();
        if data == REARM_EVENT {
            drain_eventfd(&self.rearm_evt);
            return;
        }
        if data >= DEVICE_EVENT_BASE {
            if stopped {
                // Nobody will consume this event until the driver resets the device: stop
                // watching the source rather than being woken by it again and again.
                let token = data - DEVICE_EVENT_BASE;
                let source = self
                    .guarded("event_sources", |d| d.event_sources())
                    .unwrap_or_default()
                    .into_iter()
                    .find(|s| s.token == token);
                if let Some(parked) = source.as_ref().map(source_events) {
                    if ops.remove(parked).is_ok() {
                        self.parked.push(parked);
                    }
                }
                return;
            }
            self.process_device_event(data - DEVICE_EVENT_BASE);
        } else if let Ok(index) = usize::try_from(data) {
            self.process_queue_event(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};

    use super::*;
    use crate::virtio::state::{DeviceState, RngState};
    use crate::virtio::testutil::*;
    use crate::virtio::{
        read_config_bytes, EventSource, INTERRUPT_CONFIG, INTERRUPT_VRING, TYPE_BLOCK,
    };
    use crate::{BusBuilder, BusRange};

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    const OFFERED: u64 = VERSION_1 | 1 << 5 | 1 << 9;
    const S_ACK: u32 = STATUS_ACKNOWLEDGE;
    const S_DRV: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    const S_FOK: u32 = S_DRV | STATUS_FEATURES_OK;
    const S_OK: u32 = S_FOK | STATUS_DRIVER_OK;

    /// A queue as the device received it: (ready, size, desc, avail, used).
    type QueueSeen = (bool, u16, u64, u64, u64);

    /// Records what the transport asks of it.
    #[derive(Debug, Default)]
    struct Dummy {
        acked: Option<u64>,
        /// (ready, size, desc, avail, used) per queue at the last activation.
        activated: Option<Vec<QueueSeen>>,
        processed: Vec<usize>,
        events: Vec<u32>,
        resets: u32,
        /// What `process_queue` answers next.
        answer: Option<bool>,
        /// The queues `process_queue` says have work left.
        rearm: u64,
        /// The method that panics (`"process_queue"`, `"activate"`, ...), if any.
        panic_in: Option<&'static str>,
        interrupt: Option<Interrupt>,
        evt: Option<EventFd>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn name(&self) -> &'static str {
            "dummy"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            OFFERED
        }
        fn ack_features(&mut self, features: u64) {
            self.acked = Some(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            self.maybe_panic("read_config");
            read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            interrupt: Interrupt,
        ) -> Result<(), Error> {
            self.maybe_panic("activate");
            self.activated = Some(
                queues
                    .iter()
                    .map(|q| {
                        (
                            q.ready(),
                            q.size(),
                            q.desc_table(),
                            q.avail_ring(),
                            q.used_ring(),
                        )
                    })
                    .collect(),
            );
            self.interrupt = Some(interrupt);
            Ok(())
        }
        fn process_queue(&mut self, index: usize) -> Result<Processed, Error> {
            self.processed.push(index);
            if self.panic_in == Some("process_queue") {
                panic!("dummy: boom in queue {index}");
            }
            match self.answer.take() {
                Some(b) => Ok(Processed {
                    interrupt: b,
                    rearm: self.rearm,
                }),
                None => Err(Error::VirtioFault {
                    device: "dummy",
                    queue: index,
                    fault: GuestFault::BrokenChain { head: 3 },
                }),
            }
        }
        fn event_sources(&self) -> Vec<EventSource> {
            self.evt
                .iter()
                .map(|e| EventSource {
                    fd: e.as_raw_fd(),
                    token: 7,
                    edge_triggered: false,
                })
                .collect()
        }
        fn process_event(&mut self, token: u32) -> Result<Processed, Error> {
            self.maybe_panic("process_event");
            self.events.push(token);
            if let Some(e) = &self.evt {
                drain_eventfd(e);
            }
            Ok(Processed::IDLE)
        }
        fn reset(&mut self) {
            self.maybe_panic("reset");
            self.resets += 1;
            self.activated = None;
            self.acked = None;
        }
        fn queues(&self) -> Vec<&Queue> {
            Vec::new()
        }
        fn save_state(&self) -> DeviceState {
            DeviceState::Rng(RngState {
                rate_limiter: Default::default(),
            })
        }
        fn restore_state(&mut self, state: &DeviceState) -> Result<(), Error> {
            self.maybe_panic("restore_state");
            match state {
                DeviceState::Rng(_) => Ok(()),
                other => Err(Error::DeviceStateMismatch {
                    device: "dummy",
                    saved: other.device_name(),
                }),
            }
        }
    }

    impl Dummy {
        fn maybe_panic(&self, method: &str) {
            if self.panic_in == Some(method) {
                panic!("dummy: boom in {method}");
            }
        }
    }

    use std::os::fd::AsRawFd;

    fn dev() -> VirtioMmio<Dummy> {
        VirtioMmio::new(Dummy::default(), guest_mem()).unwrap()
    }

    fn queues() -> [TestQueue; 2] {
        [TestQueue::new(0x1000, 16), TestQueue::new(0x2000, 8)]
    }

    #[test]
    fn identification_registers() {
        let mut m = dev();
        assert_eq!(rd(&mut m, 0x000), 0x7472_6976);
        assert_eq!(rd(&mut m, 0x004), 2);
        assert_eq!(rd(&mut m, 0x008), TYPE_BLOCK);
        assert_eq!(rd(&mut m, 0x00c), 0);
        // QueueNumMax per queue; 0 past the last one, which is how drivers count queues.
        for (sel, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
            wr(&mut m, 0x30, sel);
            assert_eq!(rd(&mut m, 0x34), max, "queue {sel}");
            assert_eq!(rd(&mut m, 0x44), 0);
        }
        // No shared memory regions.
        assert_eq!(rd(&mut m, 0x0b0), u32::MAX);
        assert_eq!(rd(&mut m, 0x0bc), u32::MAX);
        assert_eq!(m.stats().invalid_accesses, 0);
        assert_eq!(m.queue_events().len(), 2);
        assert_eq!(BusDevice::name(&m), "dummy");
    }

    #[test]
    fn device_features_by_selector() {
        let mut m = dev();
        wr(&mut m, 0x14, 0);
        assert_eq!(rd(&mut m, 0x10), OFFERED as u32);
        wr(&mut m, 0x14, 1);
        assert_eq!(rd(&mut m, 0x10), (OFFERED >> 32) as u32);
        wr(&mut m, 0x14, 2);
        assert_eq!(rd(&mut m, 0x10), 0);
    }

    #[test]
    fn features_accepted_reach_the_device() {
        let mut m = dev();
        bring_up(&mut m, VERSION_1 | 1 << 9, &queues());
        assert_eq!(m.device().acked, Some(VERSION_1 | 1 << 9));
        assert_eq!(m.status(), S_OK);
        assert_eq!(m.driver_features(), VERSION_1 | 1 << 9);
        assert!(m.is_running());
    }

    fn negotiate(m: &mut VirtioMmio<Dummy>, features: u64) -> u32 {
        wr(m, 0x70, S_ACK);
        wr(m, 0x70, S_DRV);
        wr(m, 0x24, 0);
        wr(m, 0x20, features as u32);
        wr(m, 0x24, 1);
        wr(m, 0x20, (features >> 32) as u32);
        wr(m, 0x70, S_FOK);
        rd(m, 0x70)
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut m = dev();
        // A legacy driver: no VIRTIO_F_VERSION_1. FEATURES_OK does not stick (3.1.1 step 6).
        assert_eq!(negotiate(&mut m, 1 << 9), S_DRV);
        assert_eq!(m.stats().features_refused, 1);
        assert_eq!(m.device().acked, None);
        // DRIVER_OK without FEATURES_OK is out of order and ignored.
        wr(&mut m, 0x70, S_DRV | STATUS_DRIVER_OK);
        assert_eq!(rd(&mut m, 0x70), S_DRV);
        assert!(m.device().activated.is_none());
    }

    #[test]
    fn features_the_device_does_not_offer_are_refused() {
        let mut m = dev();
        assert_eq!(negotiate(&mut m, VERSION_1 | 1 << 2), S_DRV);
        // Also a bit in the high word.
        wr(&mut m, 0x70, 0);
        assert_eq!(negotiate(&mut m, VERSION_1 | 1 << 40), S_DRV);
        assert_eq!(m.stats().features_refused, 2);
        // After a reset a proper subset is accepted.
        wr(&mut m, 0x70, 0);
        assert_eq!(negotiate(&mut m, VERSION_1), S_FOK);
    }

    #[test]
    fn driver_features_only_between_driver_and_features_ok() {
        let mut m = dev();
        wr(&mut m, 0x20, 0xffff_ffff);
        assert_eq!(m.stats().ignored_writes, 1);
        assert_eq!(negotiate(&mut m, VERSION_1), S_FOK);
        // Changing features after FEATURES_OK is ignored.
        wr(&mut m, 0x24, 0);
        wr(&mut m, 0x20, 1 << 9);
        assert_eq!(m.driver_features(), VERSION_1);
        assert_eq!(m.stats().ignored_writes, 2);
        // A selector past 1 selects nothing.
        wr(&mut m, 0x70, 0);
        wr(&mut m, 0x70, S_ACK);
        wr(&mut m, 0x70, S_DRV);
        wr(&mut m, 0x24, 2);
        wr(&mut m, 0x20, 1);
        assert_eq!(m.driver_features(), 0);
        assert_eq!(m.stats().ignored_writes, 3);
    }

    #[test]
    fn status_must_follow_the_initialization_order() {
        let mut m = dev();
        // DRIVER before ACKNOWLEDGE, FEATURES_OK before DRIVER: refused.
        wr(&mut m, 0x70, STATUS_DRIVER);
        wr(&mut m, 0x70, S_ACK | STATUS_FEATURES_OK);
        assert_eq!(rd(&mut m, 0x70), 0);
        wr(&mut m, 0x70, S_ACK);
        // Unknown bits and the device-owned DEVICE_NEEDS_RESET cannot be set by the driver.
        wr(&mut m, 0x70, S_ACK | 0x10);
        assert_eq!(rd(&mut m, 0x70), S_ACK);
        wr(&mut m, 0x70, S_ACK | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut m, 0x70), S_ACK);
        wr(&mut m, 0x70, S_DRV);
        // Clearing a bit without a reset is refused.
        wr(&mut m, 0x70, S_ACK);
        assert_eq!(rd(&mut m, 0x70), S_DRV);
        assert_eq!(m.stats().invalid_status_writes, 4);
        // Several steps in one write are fine when in order.
        wr(&mut m, 0x70, 0);
        wr(&mut m, 0x70, S_DRV);
        assert_eq!(rd(&mut m, 0x70), S_DRV);
    }

    #[test]
    fn queue_configuration_reaches_the_device_at_driver_ok() {
        let mut m = dev();
        let [q0, _] = queues();
        // Before FEATURES_OK queue writes are ignored.
        setup_queue(&mut m, 0, &q0);
        assert_eq!(m.stats().ignored_writes, 8);
        assert_eq!(rd(&mut m, 0x44), 0);
        // Only queue 0 is made ready; queue 1 is left alone.
        negotiate(&mut m, VERSION_1);
        setup_queue(&mut m, 0, &TestQueue::new(0x1_0000_0000, 16));
        // The high halves written above are replaced by these.
        setup_queue(&mut m, 0, &q0);
        wr(&mut m, 0x30, 0);
        assert_eq!(rd(&mut m, 0x44), 1);
        wr(&mut m, 0x70, S_OK);
        assert_eq!(
            m.device().activated,
            Some(vec![
                (true, 16, q0.desc, q0.avail, q0.used),
                (false, 8, 0, 0, 0)
            ])
        );
        // After DRIVER_OK the queue can no longer be changed.
        let ignored = m.stats().ignored_writes;
        wr(&mut m, 0x38, 4);
        wr(&mut m, 0x44, 0);
        assert_eq!(m.stats().ignored_writes, ignored + 2);
        assert_eq!(rd(&mut m, 0x44), 1);
        // Writes to a queue that does not exist are ignored too.
        wr(&mut m, 0x70, 0);
        negotiate(&mut m, VERSION_1);
        wr(&mut m, 0x30, 5);
        wr(&mut m, 0x44, 1);
        assert_eq!(m.stats().ignored_writes, ignored + 3);
    }

    #[test]
    fn bad_queue_configuration_sets_needs_reset() {
        let bad = [
            // Size not a power of two; zero; above QueueNumMax.
            (
                TestQueue {
                    size: 12,
                    ..TestQueue::new(0x1000, 16)
                },
                "power of two",
            ),
            (
                TestQueue {
                    size: 0,
                    ..TestQueue::new(0x1000, 16)
                },
                "power of two",
            ),
            (TestQueue::new(0x1000, 32), "power of two"),
            // Misaligned descriptor table.
            (TestQueue::new(0x1008, 16), "misaligned"),
            // Used ring past the end of RAM.
            (
                TestQueue {
                    used: 0xf_fffc,
                    ..TestQueue::new(0x1000, 16)
                },
                "outside",
            ),
            (
                TestQueue {
                    desc: u64::MAX - 0xf,
                    ..TestQueue::new(0x1000, 16)
                },
                "outside",
            ),
            (
                TestQueue {
                    avail: u64::MAX,
                    ..TestQueue::new(0x1000, 16)
                },
                "misaligned",
            ),
            (TestQueue::new(0xffff_fff0_0000_0000, 16), "outside"),
        ];
        for (q, why) in bad {
            let mut m = dev();
            let intr = m.interrupt_evt().unwrap().try_clone().unwrap();
            bring_up(&mut m, VERSION_1, &[q]);
            assert_eq!(m.status(), S_OK | STATUS_DEVICE_NEEDS_RESET, "{q:?}");
            assert!(!m.is_running());
            assert!(m.device().activated.is_none());
            let fault = m.last_fault().unwrap().to_string();
            assert!(fault.contains(why), "{q:?}: {fault}");
            // The driver is told through a configuration change interrupt.
            assert_eq!(rd(&mut m, 0x60), INTERRUPT_CONFIG);
            assert_eq!(intr.read().unwrap(), 1);
            // A notify now does nothing but count.
            wr(&mut m, 0x50, 0);
            m.process_queue_event(0);
            assert!(m.device().processed.is_empty());
            assert_eq!(m.stats().notifies_while_stopped, 1);
        }
    }

    #[test]
    fn notify_processing_and_interrupts() {
        let mut m = dev();
        let intr = m.interrupt_evt().unwrap().try_clone().unwrap();
        bring_up(&mut m, VERSION_1, &queues());
        // Activation kicks every queue once.
        for (i, evt) in m.queue_events().iter().enumerate() {
            assert_eq!(evt.read().unwrap(), 1, "queue {i}");
        }
        // A direct QueueNotify write (no ioeventfd registered) signals the queue's EventFd
        // and does no device work on the vCPU thread.
        wr(&mut m, 0x50, 1);
        assert!(m.device().processed.is_empty());
        assert_eq!(m.queue_events()[1].read().unwrap(), 1);
        wr(&mut m, 0x50, 2);
        assert_eq!(m.stats().invalid_notifies, 1);

        m.device_mut().answer = Some(true);
        m.process_queue_event(1);
        assert_eq!(m.device().processed, [1]);
        assert_eq!(rd(&mut m, 0x60), INTERRUPT_VRING);
        assert_eq!(intr.read().unwrap(), 1);
        // InterruptACK clears what it names.
        wr(&mut m, 0x64, INTERRUPT_VRING);
        assert_eq!(rd(&mut m, 0x60), 0);
        // Nothing used: no interrupt.
        m.device_mut().answer = Some(false);
        m.process_queue_event(0);
        assert_eq!(rd(&mut m, 0x60), 0);
        assert!(intr.read().is_err());
        // A process call for a queue that does not exist is counted.
        m.process_queue_event(9);
        assert_eq!(m.stats().invalid_notifies, 2);
    }

    #[test]
    fn work_left_over_signals_the_queue_again() {
        let mut m = dev();
        bring_up(&mut m, VERSION_1, &queues());
        for evt in m.queue_events() {
            drain_eventfd(evt);
        }
        m.device_mut().answer = Some(false);
        m.device_mut().rearm = 1 << 1;
        m.process_queue_event(0);
        // Queue 1's EventFd (the ioeventfd) is readable again; queue 0's is not.
        assert_eq!(m.queue_events()[1].read().unwrap(), 1);
        assert!(m.queue_events()[0].read().is_err());
        assert_eq!(m.stats().rearms, 1);
        // A queue the transport does not have is not signalled, and counted.
        m.device_mut().answer = Some(false);
        m.device_mut().rearm = 1 << 5;
        m.process_queue_event(0);
        assert_eq!(m.stats().invalid_notifies, 1);
        let mut p = Processed::IDLE;
        p.rearm_queue(0);
        p.rearm_queue(63);
        p.rearm_queue(64);
        assert_eq!(p.rearmed_queues().collect::<Vec<_>>(), [0, 63]);
    }

    #[test]
    fn device_fault_sets_needs_reset_until_reset() {
        let mut m = dev();
        bring_up(&mut m, VERSION_1, &queues());
        m.process_queue_event(0);
        assert_eq!(m.status(), S_OK | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut m, 0x60), INTERRUPT_CONFIG);
        assert_eq!(m.stats().needs_reset, 1);
        assert!(matches!(
            m.last_fault(),
            Some(Error::VirtioFault {
                fault: GuestFault::BrokenChain { head: 3 },
                ..
            })
        ));
        // The driver cannot clear it by writing the status back without it.
        wr(&mut m, 0x70, S_OK);
        assert_eq!(m.status(), S_OK | STATUS_DEVICE_NEEDS_RESET);
        m.process_queue_event(0);
        assert_eq!(m.device().processed, [0]);

        // Reset: everything back to the start.
        wr(&mut m, 0x70, 0);
        assert_eq!(m.status(), 0);
        assert_eq!(rd(&mut m, 0x60), 0);
        assert!(m.last_fault().is_none());
        // (bring_up began with a reset too.)
        assert_eq!(m.device().resets, 2);
        assert_eq!(m.device().activated, None);
        wr(&mut m, 0x30, 0);
        assert_eq!(rd(&mut m, 0x44), 0);
        assert!(m.queue_events()[0].read().is_err());
        // And the device can be brought up again.
        bring_up(&mut m, VERSION_1, &queues());
        assert!(m.is_running());
        m.device_mut().answer = Some(true);
        m.process_queue_event(0);
        assert_eq!(m.status(), S_OK);
    }

    #[test]
    fn failed_stops_the_device() {
        let mut m = dev();
        bring_up(&mut m, VERSION_1, &queues());
        wr(&mut m, 0x70, STATUS_FAILED);
        assert_eq!(m.status(), S_OK | STATUS_FAILED);
        assert!(!m.is_running());
        m.process_queue_event(0);
        assert!(m.device().processed.is_empty());
    }

    #[test]
    fn only_aligned_32_bit_register_accesses() {
        let mut m = dev();
        let mut two = [0xaau8; 2];
        m.read(0x0, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xaau8; 4];
        m.read(0x2, &mut four);
        assert_eq!(four, [0; 4]);
        let mut eight = [0xaau8; 8];
        m.read(0x0, &mut eight);
        assert_eq!(eight, [0; 8]);
        m.write(0x70, &[1]);
        m.write(0x71, &[1, 0, 0, 0]);
        assert_eq!(m.status(), 0);
        // Holes in the register map, and write-only registers read back 0.
        assert_eq!(rd(&mut m, 0x18), 0);
        assert_eq!(rd(&mut m, 0x50), 0);
        wr(&mut m, 0x0, 5);
        assert_eq!(m.stats().invalid_accesses, 8);
    }

    #[test]
    fn config_space_any_width_and_generation() {
        let mut m = dev();
        assert_eq!(read_config(&mut m, 0, 10), [1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
        let mut w = [0u8; 4];
        m.read(0x104, &mut w);
        assert_eq!(w, [5, 6, 7, 8]);
        let mut q = [0u8; 8];
        m.read(0x100, &mut q);
        assert_eq!(q, [1, 2, 3, 4, 5, 6, 7, 8]);
        // The last byte of the window is config space; a read past it is refused.
        let mut two = [0xffu8; 2];
        m.read(0xfff, &mut two);
        assert_eq!(two, [0, 0]);
        assert_eq!(m.stats().invalid_accesses, 1);
        // The device has no writable config.
        m.write(0x100, &[9]);
        assert_eq!(m.stats().ignored_writes, 1);

        bring_up(&mut m, VERSION_1, &queues());
        let gen = rd(&mut m, 0xfc);
        let intr = m.device().interrupt.clone().unwrap();
        intr.signal_config_change();
        assert_eq!(rd(&mut m, 0xfc), gen.wrapping_add(1));
        assert_eq!(rd(&mut m, 0x60), INTERRUPT_CONFIG);
    }

    #[test]
    fn works_on_the_bus_and_in_the_event_manager() {
        const BASE: u64 = 0xd000_1000;
        let evt = new_eventfd().unwrap();
        let dummy = Dummy {
            evt: Some(evt.try_clone().unwrap()),
            ..Dummy::default()
        };
        let dev = Arc::new(Mutex::new(VirtioMmio::new(dummy, guest_mem()).unwrap()));
        let mut b = BusBuilder::new("mmio");
        b.insert(BusRange::new(BASE, MMIO_WINDOW_SIZE), dev.clone())
            .unwrap();
        let bus = b.build();
        let mut magic = [0u8; 4];
        bus.read(BASE, &mut magic);
        assert_eq!(u32::from_le_bytes(magic), MAGIC_VALUE);

        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        bring_up(&mut dev.lock().unwrap(), VERSION_1, &queues());
        // Activation kicked both queues; the loop drains them and calls the device.
        dev.lock().unwrap().device_mut().answer = Some(false);
        let mut n = 0;
        while n < 2 {
            n += em.run_with_timeout(100).unwrap();
        }
        // The first call answered Ok(false); the second an error (no answer queued).
        assert_eq!(dev.lock().unwrap().device().processed.len(), 2);

        // The device's own event source reaches `process_event`, with its token.
        wr(&mut dev.lock().unwrap(), 0x70, 0);
        bring_up(&mut dev.lock().unwrap(), VERSION_1, &queues());
        for e in dev.lock().unwrap().queue_events() {
            drain_eventfd(e);
        }
        evt.write(1).unwrap();
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);
        assert_eq!(dev.lock().unwrap().device().events, [7]);
        // A notify through the bus goes the same way as one through an ioeventfd.
        dev.lock().unwrap().device_mut().answer = Some(true);
        assert_eq!(
            bus.write(BASE + 0x50, &0u32.to_le_bytes()),
            BusOutcome::Continue
        );
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);
        let m = dev.lock().unwrap();
        assert_eq!(m.device().processed.len(), 3);
        assert_eq!(m.interrupt().status(), INTERRUPT_VRING);
        assert_eq!(m.stats().event_registration_failures, 0);
    }

    #[test]
    fn a_stopped_device_does_not_spin_the_event_loop() {
        let evt = new_eventfd().unwrap();
        let dummy = Dummy {
            evt: Some(evt.try_clone().unwrap()),
            ..Dummy::default()
        };
        let dev = Arc::new(Mutex::new(VirtioMmio::new(dummy, guest_mem()).unwrap()));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        bring_up(&mut dev.lock().unwrap(), VERSION_1, &queues());
        // No answer queued: the first queue the device processes fails, and the device stops
        // in DEVICE_NEEDS_RESET.
        while dev.lock().unwrap().status() & STATUS_DEVICE_NEEDS_RESET == 0 {
            em.run_with_timeout(100).unwrap();
        }
        // Its level-triggered source becomes readable and stays so (nobody drains it while the
        // device is stopped): the loop sees it once, then no more.
        evt.write(1).unwrap();
        let mut woken = 0;
        for _ in 0..5 {
            woken += em.run_with_timeout(10).unwrap();
        }
        assert!(
            woken <= 2,
            "woken {woken} times by a source nobody can drain"
        );
        assert!(dev.lock().unwrap().device().events.is_empty());

        // After the driver's reset the source is watched again and reaches the device, without
        // waiting for the guest to kick a queue.
        wr(&mut dev.lock().unwrap(), 0x70, 0);
        bring_up(&mut dev.lock().unwrap(), VERSION_1, &queues());
        for e in dev.lock().unwrap().queue_events() {
            drain_eventfd(e);
        }
        for _ in 0..5 {
            em.run_with_timeout(20).unwrap();
        }
        assert_eq!(dev.lock().unwrap().device().events, [7]);
        assert_eq!(dev.lock().unwrap().stats().event_registration_failures, 0);
    }

    /// Asserts that the device last panicked in `during` and is stopped for it.
    fn assert_panicked(m: &VirtioMmio<Dummy>, during: &str, panics: u64) {
        assert_ne!(m.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(!m.is_running());
        assert_eq!(m.stats().device_panics, panics);
        match m.last_fault() {
            Some(Error::VirtioDevicePanic {
                device: "dummy",
                during: d,
                message,
            }) => {
                assert_eq!(*d, during);
                assert!(message.starts_with("dummy: boom in"), "{message}");
            }
            other => panic!("not a device panic: {other:?}"),
        }
    }

    #[test]
    fn a_device_panic_on_the_event_loop_needs_reset_and_goes_no_further() {
        let dev = Arc::new(Mutex::new(dev()));
        let intr = dev
            .lock()
            .unwrap()
            .interrupt_evt()
            .unwrap()
            .try_clone()
            .unwrap();
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        bring_up(&mut dev.lock().unwrap(), VERSION_1, &queues());
        let _ = intr.read();
        dev.lock().unwrap().device_mut().panic_in = Some("process_queue");
        // Activation kicked both queues: the first call panics, and the loop carries on.
        while dev.lock().unwrap().status() & STATUS_DEVICE_NEEDS_RESET == 0 {
            em.run_with_timeout(100).unwrap();
        }
        assert!(!dev.is_poisoned());
        {
            let m = dev.lock().unwrap();
            assert_panicked(&m, "process_queue", 1);
            let fault = m.last_fault().unwrap().to_string();
            assert!(fault.contains("dummy panicked in process_queue: dummy: boom in queue"));
            // The driver hears of it through a configuration change interrupt.
            assert_eq!(m.interrupt().status(), INTERRUPT_CONFIG);
            assert_eq!(intr.read().unwrap(), 1);
            assert_eq!(m.stats().needs_reset, 1);
            assert_eq!(m.device().processed.len(), 1);
        }
        // No further calls until the driver resets the device; then it works again.
        let evt = dev.lock().unwrap().queue_events()[1].try_clone().unwrap();
        evt.write(1).unwrap();
        for _ in 0..3 {
            em.run_with_timeout(10).unwrap();
        }
        assert_eq!(dev.lock().unwrap().device().processed.len(), 1);
        let mut m = dev.lock().unwrap();
        m.device_mut().panic_in = None;
        bring_up(&mut m, VERSION_1, &queues());
        assert!(m.is_running());
        assert!(m.last_fault().is_none());
        m.device_mut().answer = Some(true);
        m.process_queue_event(0);
        assert!(m.is_running());
        assert_eq!(m.stats().device_panics, 1);
    }

    #[test]
    fn a_device_panic_on_a_vcpu_register_access_needs_reset() {
        // In activate, reached from the guest's DRIVER_OK write.
        let mut m = dev();
        m.device_mut().panic_in = Some("activate");
        bring_up(&mut m, VERSION_1, &queues());
        assert_panicked(&m, "activate", 1);
        assert_eq!(m.status(), S_OK | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut m, 0x60), INTERRUPT_CONFIG);
        // The queues are not kicked for a device that never started.
        assert!(m.queue_events()[0].read().is_err());

        // In a configuration read: the read gives zeroes.
        let mut m = dev();
        bring_up(&mut m, VERSION_1, &queues());
        m.device_mut().panic_in = Some("read_config");
        assert_eq!(read_config(&mut m, 0, 2), [0, 0]);
        assert_panicked(&m, "read_config", 2);

        // In reset: the device stays in DEVICE_NEEDS_RESET until a reset gets through.
        let mut m = dev();
        bring_up(&mut m, VERSION_1, &queues());
        m.device_mut().panic_in = Some("reset");
        wr(&mut m, 0x70, 0);
        assert_panicked(&m, "reset", 1);
        assert_eq!(m.status(), STATUS_DEVICE_NEEDS_RESET);
        m.device_mut().panic_in = None;
        bring_up(&mut m, VERSION_1, &queues());
        assert!(m.is_running());

        // In a device event.
        let mut m = dev();
        bring_up(&mut m, VERSION_1, &queues());
        m.device_mut().panic_in = Some("process_event");
        m.process_device_event(7);
        assert_panicked(&m, "process_event", 1);
    }

    #[test]
    fn new_refuses_bad_queue_sizes() {
        #[derive(Debug)]
        struct Sizes(Vec<u16>);
        impl VirtioDevice for Sizes {
            fn device_type(&self) -> u32 {
                0
            }
            fn name(&self) -> &'static str {
                "sizes"
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &self.0
            }
            fn features(&self) -> u64 {
                0
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn activate(
                &mut self,
                _: GuestMemoryMmap,
                _: Vec<Queue>,
                _: Interrupt,
            ) -> Result<(), Error> {
                Ok(())
            }
            fn process_queue(&mut self, _: usize) -> Result<Processed, Error> {
                Ok(Processed::IDLE)
            }
            fn reset(&mut self) {}
            fn queues(&self) -> Vec<&Queue> {
                Vec::new()
            }
            fn save_state(&self) -> DeviceState {
                unreachable!("not saved")
            }
            fn restore_state(&mut self, _: &DeviceState) -> Result<(), Error> {
                Ok(())
            }
        }
        for sizes in [vec![], vec![0], vec![3], vec![16, 65535]] {
            let err = VirtioMmio::new(Sizes(sizes.clone()), guest_mem()).unwrap_err();
            assert!(matches!(err, Error::VirtioQueueSize { .. }), "{sizes:?}");
        }
        // One more queue than `Processed::rearm` has bits for.
        let err = VirtioMmio::new(Sizes(vec![4; MAX_QUEUES + 1]), guest_mem()).unwrap_err();
        assert!(
            matches!(err, Error::VirtioQueueCount { count: 65, .. }),
            "{err}"
        );
        assert!(VirtioMmio::new(Sizes(vec![4; MAX_QUEUES]), guest_mem()).is_ok());
        let boxed: Box<dyn VirtioDevice> = Box::new(Sizes(vec![MAX_QUEUE_SIZE]));
        assert!(VirtioMmio::new(boxed, guest_mem()).is_ok());
    }

    #[test]
    fn a_state_saved_mid_initialization_lets_the_driver_finish_after_restore() {
        let mut a = dev();
        let qs = queues();
        wr(&mut a, 0x70, S_ACK);
        wr(&mut a, 0x70, S_DRV);
        wr(&mut a, 0x24, 1);
        wr(&mut a, 0x20, 1);
        wr(&mut a, 0x70, S_FOK);
        setup_queue(&mut a, 0, &qs[0]);
        let state = a.save_state();
        assert_eq!(state.queues[0].size, 16);
        assert!(state.queues[0].ready && !state.queues[1].ready);

        let mut b = dev();
        b.restore_state(&state).unwrap();
        assert!(!b.is_running());
        assert_eq!(b.device().acked, Some(VERSION_1));
        assert!(b.interrupt_evt().unwrap().read().is_err());
        // The driver carries on where it was: the second queue, then DRIVER_OK.
        setup_queue(&mut b, 1, &qs[1]);
        wr(&mut b, 0x70, S_OK);
        assert!(b.is_running());
        let seen = b.device().activated.clone().unwrap();
        assert_eq!(seen[0], (true, 16, qs[0].desc, qs[0].avail, qs[0].used));
        assert_eq!(seen[1], (true, 8, qs[1].desc, qs[1].avail, qs[1].used));
    }

    #[test]
    fn a_device_panicking_in_restore_is_an_error_and_leaves_the_transport_reset() {
        let mut a = dev();
        bring_up(&mut a, VERSION_1, &queues());
        let state = a.save_state();
        let mut b = dev();
        b.device_mut().panic_in = Some("restore_state");
        let err = b.restore_state(&state).unwrap_err();
        assert!(
            matches!(
                err,
                Error::VirtioDevicePanic {
                    during: "restore_state",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(b.status(), 0);
        assert!(!b.is_running());
        // A state restored over a transport in use replaces it.
        b.device_mut().panic_in = None;
        b.restore_state(&state).unwrap();
        assert!(b.is_running());
        b.restore_state(&state).unwrap();
        assert!(b.is_running());
        assert_eq!(b.save_state(), state);
    }
}
