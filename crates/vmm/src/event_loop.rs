//! The VMM's own subscriber on the event loop: it ends the loop when a vCPU thread stops or
//! when [`VmmHandle::stop`](crate::VmmHandle::stop) asks for it. Everything else on the loop
//! (devices, the embedder's signals, console input, an API socket) is a subscriber of its own.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// A vCPU stopped (the guest reset, powered off, faulted, or hit its exit limit).
    VcpuExited,
    /// Someone holding a handle asked the VM to stop.
    StopRequested,
}

/// The subscriber that decides when the VM's event loop ends.
#[derive(Debug)]
pub struct Controller {
    vcpu_exited: EventFd,
    stop: EventFd,
    /// Set when the loop should end (the first reason wins).
    pub end: Option<LoopEnd>,
}

impl Controller {
    /// A controller ending the loop on a write to `vcpu_exited` or to `stop`.
    pub fn new(vcpu_exited: EventFd, stop: EventFd) -> Self {
        Controller {
            vcpu_exited,
            stop,
            end: None,
        }
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.vcpu_exited, EventSet::IN));
        let _ = ops.add(Events::new(&self.stop, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.vcpu_exited.as_raw_fd() {
            let _ = self.vcpu_exited.read();
            self.end.get_or_insert(LoopEnd::VcpuExited);
        } else if fd == self.stop.as_raw_fd() {
            let _ = self.stop.read();
            self.end.get_or_insert(LoopEnd::StopRequested);
        }
    }
}
