//! Virtio devices over the virtio-mmio transport (virtio v1.2).
//!
//! A [`VirtioMmio`] is the transport: a 4 KiB window of registers on the MMIO bus, the device
//! status state machine, feature negotiation and the queue configuration. It drives a
//! [`VirtioDevice`], the device proper ([`Block`], [`Rng`], [`Net`]), which owns its
//! [`Queue`]s once the driver has set DRIVER_OK.
//!
//! Guest notifications arrive on one `EventFd` per queue, which the VMM registers as a KVM
//! ioeventfd at the window's QueueNotify register so that a notify never exits to userspace; the
//! device does its work on the VMM's event loop ([`VirtioMmio`] is an
//! [`event_manager::MutEventSubscriber`]), never on a vCPU thread. Interrupts go out through an
//! [`Interrupt`], which raises a [`VirtioInterrupt`]: by default an `EventFd` the VMM registers
//! as a KVM irqfd, or anything else ([`VirtioMmio::with_interrupt`]: an MSI-X vector, a test's
//! recorder).
//!
//! The transport and the devices are generic over the guest memory ([`VirtioMemory`]: any
//! vm-memory `GuestMemory` that can be cloned and sent); Petrel's VMM uses [`GuestMemoryMmap`],
//! the default, whose dirty bitmap records the pages devices write for Diff snapshots.
//!
//! Wiring one device into a VMM (here an entropy source; [`Block`] and [`Net`] go the same
//! way):
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use petrel_devices::virtio::{mmio, Rng, VirtioMmio, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
//! use petrel_devices::{BusBuilder, BusRange};
//! use petrel_guest_mem::GuestRam;
//!
//! let ram = GuestRam::new(64 << 20)?;
//! let (base, gsi) = (0xd000_1000u64, 5u32); // a free MMIO window and a free IRQ line
//! let rng = Arc::new(Mutex::new(VirtioMmio::new(Rng::new()?, ram.memory().clone())?));
//!
//! // The vCPUs reach the registers through the MMIO bus.
//! let mut bus = BusBuilder::new("mmio");
//! bus.insert(BusRange::new(base, MMIO_WINDOW_SIZE), rng.clone())?;
//! let bus = Arc::new(bus.build());
//!
//! // KVM raises the interrupt and catches queue notifications without leaving the kernel:
//! {
//!     let dev = rng.lock().unwrap();
//!     let _irqfd = (dev.interrupt_evt(), gsi); // KVM_IRQFD for `gsi`
//!     for (i, evt) in dev.queue_events().iter().enumerate() {
//!         // KVM_IOEVENTFD at base + 0x50, 4 bytes, datamatch `i`
//!         let _ioeventfd = (evt, base + QUEUE_NOTIFY_OFFSET, i as u32);
//!     }
//! }
//!
//! // The event loop does the device work: queue notifications and the device's own fds.
//! let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new()?;
//! em.add_subscriber(rng.clone());
//!
//! // Linux learns about the window from its command line.
//! assert_eq!(mmio::cmdline_device(base, gsi), "virtio_mmio.device=4K@0xd0001000:5");
//!
//! // A guest reading the magic value:
//! let mut magic = [0u8; 4];
//! bus.read(base, &mut magic);
//! assert_eq!(&magic, b"virt");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Everything in a queue is written by the guest and is treated as hostile: descriptor chains are
//! walked with a bound, every buffer is checked against guest RAM before use, and a request the
//! device cannot even answer (no status byte, a chain that loops) puts the device into
//! DEVICE_NEEDS_RESET instead of panicking or guessing; so does a device that panics anyway (the
//! transport catches it).
//!
//! The event loop is shared: each wake-up of a device handles at most
//! [`MAX_CHAINS_PER_WAKEUP`] chains or [`MAX_BYTES_PER_WAKEUP`] bytes, and work left over is
//! re-armed through the queue's notification `EventFd` (see [`Processed`]), so that a guest
//! keeping a queue full cannot starve the VMM's other event sources.

pub mod balloon;
pub mod block;
mod chain;
mod interrupt;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
#[cfg(test)]
mod testutil;
pub mod vsock;

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

pub use interrupt::{Interrupt, InterruptCause, VirtioInterrupt};
pub use virtio_queue::{Queue, QueueT};
/// The guest memory Petrel's VMM gives its virtio devices (the default memory type of
/// [`VirtioMmio`] and [`VirtioDevice`]): vm-memory's mmap backend with a dirty bitmap, so that
/// pages a device writes are known to a Diff snapshot.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Guest memory a virtio device can work on: any vm-memory [`GuestMemory`] that the transport
/// can clone into the device at activation and that may move to the event loop's thread
/// (`GuestMemoryMmap<B>` for any bitmap, a `GuestMemoryAtomic` snapshot, an IOMMU view, ...).
pub trait VirtioMemory: GuestMemory + Clone + Send + fmt::Debug + 'static {}

impl<T: GuestMemory + Clone + Send + fmt::Debug + 'static> VirtioMemory for T {}
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

pub use balloon::{Balloon, BalloonStats, PageDiscarder};
pub use block::{Block, BlockStats};
pub use chain::{MAX_BYTES_PER_WAKEUP, MAX_CHAINS_PER_WAKEUP};
pub use mmio::{VirtioMmio, VirtioMmioStats, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
pub use net::{Net, NetStats};
pub use rng::{Rng, RngStats};
pub use state::{
    BalloonState, BlockState, DeviceState, NetState, QueueState, RngState, VirtioMmioState,
    VsockState,
};
pub use vsock::{Vsock, VsockStats};

use crate::rate_limiter::{RateLimiter, RateLimiterConfig};

/// Device type of a network card (virtio v1.2, 5 Device Types).
pub const TYPE_NET: u32 = 1;
/// Device type of a block device (virtio v1.2, 5 Device Types).
pub const TYPE_BLOCK: u32 = 2;
/// Device type of an entropy source (virtio v1.2, 5 Device Types).
pub const TYPE_RNG: u32 = 4;
/// Device type of a traditional memory balloon (virtio v1.2, 5 Device Types).
pub const TYPE_BALLOON: u32 = 5;

/// Errors from the virtio-mmio transport and from what every virtio device shares (queues,
/// eventfds, timers, saved states). Each device adds its own setup errors in its module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `EventFd` for a virtio transport or device could not be created.
    #[error("cannot create an eventfd")]
    CreateEventFd(#[source] std::io::Error),
    /// A virtio device declared a queue size the transport cannot offer.
    #[error(
        "{device}: queue {queue} has maximum size {size}; it must be a power of two from 1 to 32768"
    )]
    VirtioQueueSize {
        /// The device's name.
        device: &'static str,
        /// The queue index.
        queue: usize,
        /// The size it declared.
        size: u16,
    },
    /// A virtio device declared more queues than the transport can serve.
    #[error("{device}: {count} queues; a virtio device may have at most 64")]
    VirtioQueueCount {
        /// The device's name.
        device: &'static str,
        /// The number of queues it declared.
        count: usize,
    },
    /// A virtio device panicked; its transport caught the panic and set DEVICE_NEEDS_RESET.
    #[error("{device} panicked in {during}: {message}")]
    VirtioDevicePanic {
        /// The device's name.
        device: &'static str,
        /// What the transport had asked of it (`"process_queue"`, `"activate"`, ...).
        during: &'static str,
        /// The panic message (or a placeholder when the payload is not a string).
        message: String,
    },
    /// The guest broke a virtio rule badly enough that the device set DEVICE_NEEDS_RESET.
    #[error("{device}: queue {queue}: {fault}")]
    VirtioFault {
        /// The device's name.
        device: &'static str,
        /// The queue index.
        queue: usize,
        /// What the guest did.
        fault: GuestFault,
    },
    /// The rate-limiter timer of a virtio device could not be created.
    #[error("cannot create a timerfd")]
    CreateTimer(#[source] std::io::Error),
    /// A saved device state that this device cannot take (a value out of range, a length that
    /// does not match); the device is left as it was, or reset where noted.
    #[error("cannot restore {device}: {why}")]
    InvalidState {
        /// The device's name.
        device: &'static str,
        /// What is wrong with the state.
        why: String,
    },
    /// A virtio device was given the saved state of another device type.
    #[error("cannot restore {device} from the saved state of a {saved} device")]
    DeviceStateMismatch {
        /// The device being restored.
        device: &'static str,
        /// The device type the state was saved from.
        saved: &'static str,
    },
    /// A failure particular to one device type, in that device's own error type (e.g. a
    /// [`block::Error::BlockMismatch`] when a disk being restored is not the saved one): its
    /// message is the device error's, and `downcast_ref` recovers it.
    #[error(transparent)]
    Device(Box<dyn std::error::Error + Send + Sync>),
}

/// Feature bit: the device complies with virtio 1.x (virtio v1.2, 6 Reserved Feature Bits).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bit: the guest has noticed the device (virtio v1.2, 2.1 Device Status Field).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the guest knows how to drive the device (virtio v1.2, 2.1).
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is set up and ready to drive the device (virtio v1.2, 2.1).
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete (virtio v1.2, 2.1).
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit: the device hit an error it cannot recover from without a reset
/// (virtio v1.2, 2.1).
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status bit: the guest gave up on the device (virtio v1.2, 2.1).
pub const STATUS_FAILED: u32 = 128;

/// InterruptStatus bit: the device used a buffer in at least one queue (virtio v1.2, 4.2.2
/// MMIO Device Register Layout, InterruptStatus bit 0).
pub const INTERRUPT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration of the device changed (virtio v1.2, 4.2.2,
/// InterruptStatus bit 1).
pub const INTERRUPT_CONFIG: u32 = 2;

/// The largest queue a split virtqueue may have (virtio v1.2, 2.7 Split Virtqueues: "Queue Size
/// ... maximum Queue Size value is 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// A guest action bad enough that the device stops and sets DEVICE_NEEDS_RESET.
///
/// Carried by [`Error::VirtioFault`]. A request the device can still answer (a wrong header, a
/// buffer outside guest RAM, a bad sector) is completed with an error status instead and never
/// becomes a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFault {
    /// The available ring index moved more than the queue size past the last entry the device
    /// took (virtio v1.2, 2.7.6: the driver can make at most Queue Size buffers available).
    AvailIndex,
    /// The available or used ring could not be read or written.
    RingAccess,
    /// A chain's head index is not below the queue size.
    HeadOutOfRange {
        /// The index the guest put in the available ring.
        head: u16,
    },
    /// A chain loops, is longer than the queue, names a descriptor past the table, uses a
    /// malformed indirect table, or sits in memory the device cannot read.
    BrokenChain {
        /// The chain's head index.
        head: u16,
    },
    /// A request has no device-writable byte for its status, or that byte is outside guest RAM.
    NoStatusByte {
        /// The chain's head index.
        head: u16,
    },
    /// At DRIVER_OK a ready queue had a bad size, a misaligned ring, or a ring outside guest RAM.
    QueueConfig {
        /// What was wrong.
        what: &'static str,
    },
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFault::AvailIndex => {
                write!(f, "the available index ran more than the queue size ahead")
            }
            GuestFault::RingAccess => write!(f, "a ring could not be accessed in guest memory"),
            GuestFault::HeadOutOfRange { head } => {
                write!(f, "chain head {head} is past the descriptor table")
            }
            GuestFault::BrokenChain { head } => write!(
                f,
                "the chain at head {head} loops, is too long or leaves the descriptor table"
            ),
            GuestFault::NoStatusByte { head } => write!(
                f,
                "the request at head {head} has no writable status byte in guest RAM"
            ),
            GuestFault::QueueConfig { what } => write!(f, "invalid queue configuration: {what}"),
        }
    }
}

/// The most queues a device may have: [`Processed::rearm`] has one bit per queue.
pub const MAX_QUEUES: usize = 64;

/// What one wake-up of a device ([`VirtioDevice::process_queue`],
/// [`VirtioDevice::process_event`]) asks of the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processed {
    /// Buffers were used and the driver wants to hear of it: raise the used-buffer interrupt.
    pub interrupt: bool,
    /// Bit `i`: queue `i` still has work that the wake-up's budget
    /// ([`MAX_CHAINS_PER_WAKEUP`], [`MAX_BYTES_PER_WAKEUP`]) did not cover. The transport writes
    /// that queue's notification `EventFd`, which the event loop watches level-triggered: the
    /// next `epoll_wait` returns it again, and the device gets its next wake-up only after the
    /// other sources that were ready meanwhile have been served.
    pub rearm: u64,
}

impl Processed {
    /// Nothing to do.
    pub const IDLE: Processed = Processed {
        interrupt: false,
        rearm: 0,
    };

    /// An interrupt if `interrupt`, no work left.
    pub fn interrupt(interrupt: bool) -> Processed {
        Processed {
            interrupt,
            rearm: 0,
        }
    }

    /// Asks for another wake-up of queue `index` (below [`MAX_QUEUES`]; others are ignored).
    pub fn rearm_queue(&mut self, index: usize) {
        if index < MAX_QUEUES {
            self.rearm |= 1 << index;
        }
    }

    /// The queues to wake again, in order.
    pub fn rearmed_queues(&self) -> impl Iterator<Item = usize> {
        let mask = self.rearm;
        (0..MAX_QUEUES).filter(move |i| mask & (1 << i) != 0)
    }
}

/// A host file descriptor a device wants the event loop to watch, besides its queue events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSource {
    /// The descriptor (owned by the device; valid as long as the device lives).
    pub fd: RawFd,
    /// The device's own name for it, handed back to [`VirtioDevice::process_event`].
    pub token: u32,
    /// Watch for readability edge-triggered (the device reads until `EAGAIN` each time it is
    /// woken) rather than level-triggered.
    pub edge_triggered: bool,
}

/// A virtio device, driven by a transport ([`VirtioMmio`]).
///
/// The transport owns the registers and the queue configuration until the driver sets
/// DRIVER_OK; then it builds the [`Queue`]s and hands them to [`activate`](Self::activate).
/// After that it calls [`process_queue`](Self::process_queue) when the guest notifies a queue
/// and [`process_event`](Self::process_event) when one of the device's
/// [`event_sources`](Self::event_sources) fires. A returned `Err` (an [`Error::VirtioFault`]
/// for guest faults) makes the transport set DEVICE_NEEDS_RESET and stop calling the device
/// until the driver resets it; so does a panic in any method, which the transport catches
/// ([`Error::VirtioDevicePanic`]).
///
/// Each wake-up does a bounded amount of work: at most [`MAX_CHAINS_PER_WAKEUP`] chains or
/// [`MAX_BYTES_PER_WAKEUP`] bytes, whichever comes first, shared by every queue it serves. Work
/// left over is asked for again through [`Processed::rearm`], so that the other event sources
/// of the VMM's event loop are served in between.
pub trait VirtioDevice<M: VirtioMemory = GuestMemoryMmap>: Send + fmt::Debug {
    /// The virtio device type ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;

    /// A short name for diagnostics and errors (e.g. `"virtio-blk"`).
    fn name(&self) -> &'static str;

    /// The maximum size of each queue; the number of entries is the number of queues (at most
    /// [`MAX_QUEUES`]). Each size must be a power of two no larger than [`MAX_QUEUE_SIZE`].
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (bit 32, [`VIRTIO_F_VERSION_1`], is required).
    fn features(&self) -> u64;

    /// Called when the driver's features were accepted (FEATURES_OK); a subset of
    /// [`features`](Self::features) that includes [`VIRTIO_F_VERSION_1`].
    fn ack_features(&mut self, _features: u64) {}

    /// Fills `data` from the device configuration space at `offset`; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver write to the configuration space; the devices here have no writable fields
    /// and return `false` (the transport counts it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }

    /// Starts the device with the guest's memory and its queues (index = queue index; a queue
    /// the driver did not make ready is passed with `ready() == false`).
    fn activate(&mut self, mem: M, queues: Vec<Queue>, interrupt: Interrupt) -> Result<(), Error>;

    /// Handles a notification of queue `index`, within one wake-up's budget. Returns whether
    /// the guest should be interrupted (buffers were used and the ring's notification rules
    /// allow it) and which queues have work left.
    fn process_queue(&mut self, index: usize) -> Result<Processed, Error>;

    /// Host descriptors to watch for this device (a tap, a timer), registered once.
    fn event_sources(&self) -> Vec<EventSource> {
        Vec::new()
    }

    /// Handles one of the device's [`event_sources`](Self::event_sources); same return as
    /// [`process_queue`](Self::process_queue).
    fn process_event(&mut self, _token: u32) -> Result<Processed, Error> {
        Ok(Processed::IDLE)
    }

    /// Returns the device to its state before activation: drops the queues and the guest
    /// memory, forgets acknowledged features and in-flight state.
    fn reset(&mut self);

    /// The device's counters by name (requests served, bytes, errors), for the VMM's reports.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The device as [`Any`], so that a VMM holding `VirtioMmio<Box<dyn VirtioDevice>>` can
    /// reach the host-side methods of the concrete type ([`VirtioMmio::device_as_mut`]).
    /// `None` (the default) for a device that does not offer it.
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }

    /// The queues handed over at [`activate`](Self::activate), by index, as they are now (the
    /// transport saves their places in the rings); empty when the device is not active.
    fn queues(&self) -> Vec<&Queue>;

    /// The device's own state for a snapshot (the transport saves the queues and registers).
    fn save_state(&self) -> DeviceState;

    /// Checks `state` against this device, built anew from the VM's configuration, and takes
    /// what it keeps of it; called by [`VirtioMmio::restore_state`] before the device is
    /// activated again. A state of another device type is [`Error::DeviceStateMismatch`]; a
    /// device that is not the one the guest knew (another disk size, MAC or CID) is an error
    /// too, and the device is left for the transport to reset.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), Error>;
}

impl<M: VirtioMemory, D: VirtioDevice<M> + ?Sized> VirtioDevice<M> for Box<D> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn features(&self) -> u64 {
        (**self).features()
    }
    fn ack_features(&mut self, features: u64) {
        (**self).ack_features(features)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        (**self).write_config(offset, data)
    }
    fn activate(&mut self, mem: M, queues: Vec<Queue>, interrupt: Interrupt) -> Result<(), Error> {
        (**self).activate(mem, queues, interrupt)
    }
    fn process_queue(&mut self, index: usize) -> Result<Processed, Error> {
        (**self).process_queue(index)
    }
    fn event_sources(&self) -> Vec<EventSource> {
        (**self).event_sources()
    }
    fn process_event(&mut self, token: u32) -> Result<Processed, Error> {
        (**self).process_event(token)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        (**self).counters()
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        (**self).as_any_mut()
    }
    fn queues(&self) -> Vec<&Queue> {
        (**self).queues()
    }
    fn save_state(&self) -> DeviceState {
        (**self).save_state()
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), Error> {
        (**self).restore_state(state)
    }
}

/// Copies the bytes of a configuration space `config` at `offset` into `data`; what lies past
/// the end reads as 0. For [`VirtioDevice::read_config`] implementations.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Whether `[addr, addr + len)` lies inside guest RAM (an empty range anywhere counts).
pub(crate) fn in_ram<M: GuestMemory + ?Sized>(mem: &M, addr: u64, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    len == 0 || mem.check_range(GuestAddress(addr), len, Permissions::ReadWrite)
}

/// A non-blocking, close-on-exec `EventFd`.
pub(crate) fn new_eventfd() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::CreateEventFd)
}

/// Reads an `EventFd` or similar counter fd to clear it; `WouldBlock` (nothing pending) is fine.
pub(crate) fn drain_eventfd(evt: &EventFd) {
    match evt.read() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => {}
    }
}

/// A one-shot timer for a device's event loop: a close-on-exec `CLOCK_MONOTONIC` timerfd
/// (`TimerFd::new`), made non-blocking so that reading it when it has not fired (a spurious
/// wake-up, a reset) never blocks the event loop.
pub(crate) fn new_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    petrel_util::set_nonblocking(&timer)?;
    Ok(timer)
}

/// Arms `timer` to fire once, `after` from now. A zero duration would disarm a timerfd, so it
/// becomes 1 ns.
pub(crate) fn arm_timer(timer: &mut TimerFd, after: Duration) -> io::Result<()> {
    timer
        .reset(after.max(Duration::from_nanos(1)), None)
        .map_err(io::Error::from)
}

/// Clears a timer's expiry count; does nothing (without blocking) if it has not fired.
pub(crate) fn drain_timer(timer: &mut TimerFd) {
    // `WouldBlock` (not fired) is the only expected error; there is nothing to do about others.
    let _ = timer.wait();
}

/// Shortest wait a throttled device sleeps: a limiter that is short of a few tokens would
/// otherwise wake the event loop many thousand times a second.
const MIN_THROTTLE_WAIT: Duration = Duration::from_millis(1);

/// A device's rate limiter for one direction of traffic, with the timer that wakes the device
/// when the limiter lets it go on (one of the device's event sources).
///
/// The device asks [`admit`](Self::admit) before it serves each chain; a `false` answer means
/// the chain stays in the ring, the timer is armed, and the device takes no more chains from
/// that queue until [`waiting`](Self::waiting) says the time has come (the timer fired, or
/// the guest notified after it was due).
pub(crate) struct Throttle {
    limiter: RateLimiter,
    /// Non-blocking, one-shot.
    timer: TimerFd,
    /// When the armed timer fires.
    wake_at: Option<Instant>,
    /// Times a chain was held back for lack of tokens.
    throttled: u64,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("limiter", &self.limiter)
            .field("wake_at", &self.wake_at)
            .field("throttled", &self.throttled)
            .finish()
    }
}

impl Throttle {
    /// A throttle with `config`'s buckets (none: no limit) and a new timer.
    pub(crate) fn new(config: &RateLimiterConfig) -> Result<Throttle, Error> {
        Ok(Throttle {
            limiter: RateLimiter::new(config, Instant::now()),
            timer: new_timer().map_err(Error::CreateTimer)?,
            wake_at: None,
            throttled: 0,
        })
    }

    /// Whether the device is still to wait for its timer at `now`; once the time has come this
    /// forgets the wait, whether or not the timer was seen to fire.
    pub(crate) fn waiting(&mut self, now: Instant) -> bool {
        match self.wake_at {
            Some(at) if now < at => true,
            Some(_) => {
                self.wake_at = None;
                false
            }
            None => false,
        }
    }

    /// Takes `ops` operations and `bytes` bytes from the limiter; if it cannot, counts the
    /// hold-up, arms the timer for when it can, and answers `false`.
    pub(crate) fn admit(&mut self, ops: u64, bytes: u64, now: Instant) -> bool {
        match self.limiter.try_consume(ops, bytes, now) {
            Ok(()) => true,
            Err(t) => {
                self.throttled += 1;
                self.sleep(t.wait, now);
                false
            }
        }
    }

    /// Arms the timer to wake the device `after` from `now` (at least [`MIN_THROTTLE_WAIT`]).
    /// If arming fails the device waits for the guest's next notification instead.
    pub(crate) fn sleep(&mut self, after: Duration, now: Instant) {
        let after = after.max(MIN_THROTTLE_WAIT);
        if arm_timer(&mut self.timer, after).is_ok() {
            self.wake_at = Some(now + after);
        }
    }

    /// The timer fired: clears it and ends the wait.
    pub(crate) fn fired(&mut self) {
        drain_timer(&mut self.timer);
        self.wake_at = None;
    }

    /// Applies a PATCH to the limiter ([`RateLimiter::update`]). A device that was waiting is
    /// woken at once through its timer, to try again under the new limits.
    pub(crate) fn update(&mut self, patch: &RateLimiterConfig) {
        let now = Instant::now();
        self.limiter.update(patch, now);
        if self.wake_at.is_some() && arm_timer(&mut self.timer, Duration::ZERO).is_ok() {
            self.wake_at = Some(now);
        }
    }

    /// Forgets a wait and disarms the timer (device reset). The limiter's tokens are kept: a
    /// reset does not buy the guest a fresh budget.
    pub(crate) fn reset(&mut self) {
        self.wake_at = None;
        let _ = self.timer.clear();
        drain_timer(&mut self.timer);
    }

    /// Starts over with `config`'s buckets, full, and no wait (snapshot restore: the saved
    /// limiter's parameters with the fresh budget a new device has).
    pub(crate) fn restore(&mut self, config: &RateLimiterConfig) {
        self.limiter = RateLimiter::new(config, Instant::now());
        self.reset();
    }

    /// How long until the device looks again, when it is waiting.
    pub(crate) fn next_wake(&self) -> Option<Duration> {
        self.wake_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The limiter's parameters.
    pub(crate) fn config(&self) -> RateLimiterConfig {
        self.limiter.config()
    }

    /// Times a chain was held back.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled
    }

    /// The timer as one of the device's [`VirtioDevice::event_sources`], named `token`
    /// (level-triggered: the device reads it in [`Throttle::fired`]).
    pub(crate) fn event_source(&self, token: u32) -> EventSource {
        EventSource {
            fd: self.timer.as_raw_fd(),
            token,
            edge_triggered: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_timers_never_block_the_event_loop() {
        let mut timer = new_timer().unwrap();
        // SAFETY: F_GETFL takes no argument and touches no memory.
        let flags = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        // Not fired: reading answers at once instead of waiting.
        let err = timer.wait().unwrap_err();
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::WouldBlock);
        drain_timer(&mut timer);
        // A zero duration still arms it (a zero `it_value` would disarm the timerfd).
        arm_timer(&mut timer, Duration::ZERO).unwrap();
        assert!(timer.is_armed().unwrap() || timer.wait().unwrap() == 1);
    }

    #[test]
    fn a_throttle_sleeps_until_its_limiter_lets_it_go_on() {
        let one_per_sec = RateLimiterConfig {
            bandwidth: None,
            ops: Some(crate::rate_limiter::TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
        };
        let mut t = Throttle::new(&one_per_sec).unwrap();
        let now = Instant::now();
        assert!(!t.waiting(now));
        assert!(t.admit(1, 0, now));
        assert!(!t.admit(1, 0, now));
        assert_eq!(t.throttled(), 1);
        assert!(t.timer.is_armed().unwrap());
        assert!(t.waiting(now + Duration::from_millis(999)));
        assert!(!t.waiting(now + Duration::from_millis(1000)));
        // A PATCH wakes a waiting device at once.
        assert!(!t.admit(1, 0, now));
        t.update(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(crate::rate_limiter::TokenBucketConfig::default()),
        });
        assert!(!t.waiting(Instant::now()));
        assert!(t.admit(1000, 0, Instant::now()));
        assert_eq!(t.config(), RateLimiterConfig::default());
        t.reset();
        assert!(!t.timer.is_armed().unwrap());
        assert_eq!(t.next_wake(), None);
    }
}
