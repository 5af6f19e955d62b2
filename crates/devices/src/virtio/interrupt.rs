//! How a virtio device interrupts its driver: the causes, the [`VirtioInterrupt`] a
//! transport signals (an irqfd's `EventFd` in Petrel's VMM), and the shared [`Interrupt`]
//! state behind the InterruptStatus register.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{INTERRUPT_CONFIG, INTERRUPT_VRING};

/// Why a virtio device interrupts the driver: the two causes the virtio spec distinguishes
/// (virtio v1.2, 2.3 and 2.7.7: used buffer and configuration change notifications).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptCause {
    /// The device used buffers in a queue.
    UsedBuffer,
    /// The configuration space changed, or the device status needs the driver's attention.
    ConfigChange,
}

/// How a virtio transport delivers an interrupt to the guest: an irqfd [`EventFd`] (KVM injects
/// the line's GSI; what Petrel's VMM uses), an MSI-X vector, or a test's recorder.
///
/// The InterruptStatus bits and ConfigGeneration are the transport's business ([`Interrupt`]
/// keeps them); an implementation only raises the signal.
pub trait VirtioInterrupt: Send + Sync + fmt::Debug {
    /// Raises the interrupt for `cause`. An error is counted by the caller
    /// ([`Interrupt::trigger_failures`]); the guest then sees the status bit on its next read.
    fn trigger(&self, cause: InterruptCause) -> io::Result<()>;

    /// The `EventFd` a hypervisor can wire to the guest as an irqfd, when this interrupt is one.
    fn irqfd(&self) -> Option<&EventFd> {
        None
    }
}

/// The irqfd implementation: each interrupt writes 1 to the `EventFd`, which KVM (after
/// `KVM_IRQFD`) turns into an injection of the line's GSI without a return to the VMM.
impl VirtioInterrupt for EventFd {
    fn trigger(&self, _cause: InterruptCause) -> io::Result<()> {
        self.write(1)
    }

    fn irqfd(&self) -> Option<&EventFd> {
        Some(self)
    }
}

/// The interrupt of a virtio-mmio device: its InterruptStatus and ConfigGeneration registers,
/// and the [`VirtioInterrupt`] that raises it.
///
/// Cloned between the transport (which reads and acknowledges the status) and the device
/// (which raises it).
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<InterruptState>);

#[derive(Debug)]
struct InterruptState {
    trigger: Box<dyn VirtioInterrupt>,
    status: AtomicU32,
    config_generation: AtomicU32,
    trigger_failures: AtomicU64,
}

impl Interrupt {
    /// An interrupt that writes `evt` when raised (an irqfd).
    pub fn new(evt: EventFd) -> Self {
        Self::with_trigger(Box::new(evt))
    }

    /// An interrupt raised through `trigger` (an MSI-X vector, a test's recorder, ...).
    pub fn with_trigger(trigger: Box<dyn VirtioInterrupt>) -> Self {
        Interrupt(Arc::new(InterruptState {
            trigger,
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            trigger_failures: AtomicU64::new(0),
        }))
    }

    /// Sets [`INTERRUPT_VRING`] and raises the interrupt ("used buffer notification").
    pub fn signal_used_queue(&self) {
        self.raise(INTERRUPT_VRING);
    }

    /// Records a change of the configuration space (ConfigGeneration moves on), sets
    /// [`INTERRUPT_CONFIG`] and raises the interrupt.
    pub fn signal_config_change(&self) {
        self.0.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(INTERRUPT_CONFIG);
    }

    /// Records a change of the configuration space without raising the interrupt (before
    /// DRIVER_OK: the driver reads the configuration anyway).
    pub(crate) fn bump_config_generation(&self) {
        self.0.config_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Sets [`INTERRUPT_CONFIG`] and raises the interrupt without a configuration change (how
    /// the driver learns of DEVICE_NEEDS_RESET; virtio v1.2, 2.1.2).
    pub(crate) fn signal_status_change(&self) {
        self.raise(INTERRUPT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.0.status.fetch_or(bit, Ordering::AcqRel);
        self.fire(bit);
    }

    fn fire(&self, status: u32) {
        let cause = if status & INTERRUPT_VRING != 0 {
            InterruptCause::UsedBuffer
        } else {
            InterruptCause::ConfigChange
        };
        if self.0.trigger.trigger(cause).is_err() {
            self.0.trigger_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.0.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the bits set in `bits`.
    pub(crate) fn ack(&self, bits: u32) {
        self.0.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears the whole status (device reset).
    pub(crate) fn clear(&self) {
        self.0.status.store(0, Ordering::Release);
    }

    /// Sets InterruptStatus and ConfigGeneration to saved values (snapshot restore), and raises
    /// the interrupt once if a status bit is set: the guest had not acknowledged it, and the
    /// injection may have been lost with the old process.
    pub(crate) fn restore(&self, status: u32, config_generation: u32) {
        self.0.status.store(status, Ordering::Release);
        self.0
            .config_generation
            .store(config_generation, Ordering::Release);
        if status != 0 {
            self.fire(status);
        }
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.0.config_generation.load(Ordering::Acquire)
    }

    /// The `EventFd` written on each interrupt (register it with KVM as an irqfd), when the
    /// interrupt is an irqfd.
    pub fn eventfd(&self) -> Option<&EventFd> {
        self.0.trigger.irqfd()
    }

    /// How many times raising the interrupt failed.
    pub fn trigger_failures(&self) -> u64 {
        self.0.trigger_failures.load(Ordering::Relaxed)
    }
}
