//! Interrupt lines as `EventFd`s.
//!
//! A device raises its interrupt by writing to an `EventFd` that the VMM has registered with KVM
//! as an irqfd for the device's GSI: KVM then injects the interrupt itself, without a return to
//! the VMM. [`EventFdTrigger`] adapts such an `EventFd` to `vm_superio`'s [`Trigger`] trait.

use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an `EventFd` (registered by the VMM as a KVM irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`; each [`trigger`](Trigger::trigger) adds 1 to its counter.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The `EventFd` itself, e.g. to register it as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_writes_one_per_call() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = EventFdTrigger::new(evt.try_clone().unwrap());
        t.trigger().unwrap();
        t.trigger().unwrap();
        assert_eq!(evt.read().unwrap(), 2);
        // Nothing pending now: a non-blocking read says so.
        assert_eq!(evt.read().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // The wrapped fd is the same eventfd object (a dup), so it sees the same counter.
        t.trigger().unwrap();
        assert_eq!(t.eventfd().read().unwrap(), 1);
    }
}
