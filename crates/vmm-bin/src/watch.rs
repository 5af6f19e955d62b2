//! The binary's own event sources on the VM's event loop: the stop signals.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_vmm::{Timeline, VmmHandle};

use crate::signals::{self, StopSignals};

/// Stops the VM when SIGINT, SIGTERM or SIGHUP arrives (through a signalfd), and remembers
/// which one did, for the message at the end.
#[derive(Debug)]
pub struct SignalWatcher {
    signals: StopSignals,
    vmm: VmmHandle,
    timeline: Timeline,
    received: Arc<Mutex<Option<&'static str>>>,
}

impl SignalWatcher {
    /// A watcher stopping `vmm`; the name of the first signal goes into `received`.
    pub fn new(
        signals: StopSignals,
        vmm: VmmHandle,
        timeline: Timeline,
        received: Arc<Mutex<Option<&'static str>>>,
    ) -> Self {
        SignalWatcher {
            signals,
            vmm,
            timeline,
            received,
        }
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.signals.as_raw_fd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Some(sig) = self.signals.read() {
            let name = signals::name(sig);
            let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            if received.is_none() {
                *received = Some(name);
                self.timeline.mark(&format!("{name} received"));
            }
            self.vmm.stop();
        }
    }
}
