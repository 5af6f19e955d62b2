//! The main thread's event loop (event-manager over epoll): the vCPU-exit EventFd, the stop
//! signals, and the serial console's input.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_devices::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::signals::StopSignals;

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// A vCPU stopped (the guest reset, powered off, faulted, or hit its exit limit).
    VcpuExited,
    /// A stop signal arrived.
    Signal(libc::c_int),
}

/// Serial console input: host stdin into the guest's UART, read only while the UART's FIFO
/// has room (the UART's `input_ready` EventFd says when it has room again).
#[derive(Debug)]
pub struct ConsoleInput {
    /// The UART.
    pub serial: Arc<Mutex<Serial>>,
    /// Fires when the guest drained the receive FIFO.
    pub input_ready: EventFd,
}

/// The subscriber that decides when the VM ends.
#[derive(Debug)]
pub struct Controller {
    vcpu_exited: EventFd,
    signals: StopSignals,
    console: Option<ConsoleInput>,
    stdin_watched: bool,
    /// Set when the loop should end.
    pub end: Option<LoopEnd>,
}

const STDIN: i32 = libc::STDIN_FILENO;

impl Controller {
    /// A controller for these sources.
    pub fn new(vcpu_exited: EventFd, signals: StopSignals, console: Option<ConsoleInput>) -> Self {
        Controller {
            vcpu_exited,
            signals,
            console,
            stdin_watched: false,
            end: None,
        }
    }

    fn watch_stdin(&mut self, ops: &mut EventOps) {
        if !self.stdin_watched && ops.add(Events::new_raw(STDIN, EventSet::IN)).is_ok() {
            self.stdin_watched = true;
        }
    }

    fn unwatch_stdin(&mut self, ops: &mut EventOps) {
        if self.stdin_watched {
            let _ = ops.remove(Events::new_raw(STDIN, EventSet::IN));
            self.stdin_watched = false;
        }
    }

    fn forward_stdin(&mut self, ops: &mut EventOps) {
        let Some(console) = &self.console else { return };
        let space = console.serial.lock().map(|s| s.input_space()).unwrap_or(0);
        if space == 0 {
            // FIFO full: stop reading until the guest drains it.
            self.unwatch_stdin(ops);
            return;
        }
        let mut buf = [0u8; 64];
        let want = space.min(buf.len());
        match std::io::stdin().lock().read(&mut buf[..want]) {
            Ok(0) | Err(_) => self.unwatch_stdin(ops), // EOF or unusable stdin
            Ok(n) => {
                if let Ok(mut s) = console.serial.lock() {
                    s.enqueue_input(&buf[..n]);
                }
            }
        }
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.vcpu_exited, EventSet::IN));
        let _ = ops.add(Events::new_raw(self.signals.as_raw_fd(), EventSet::IN));
        if let Some(c) = &self.console {
            let _ = ops.add(Events::new(&c.input_ready, EventSet::IN));
            self.watch_stdin(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.vcpu_exited.as_raw_fd() {
            let _ = self.vcpu_exited.read();
            self.end.get_or_insert(LoopEnd::VcpuExited);
        } else if fd == self.signals.as_raw_fd() {
            if let Some(sig) = self.signals.read() {
                self.end.get_or_insert(LoopEnd::Signal(sig));
            }
        } else if fd == STDIN {
            if events
                .event_set()
                .intersects(EventSet::HANG_UP | EventSet::ERROR)
                && !events.event_set().contains(EventSet::IN)
            {
                self.unwatch_stdin(ops);
            } else {
                self.forward_stdin(ops);
            }
        } else if let Some(c) = &self.console {
            if fd == c.input_ready.as_raw_fd() {
                let _ = c.input_ready.read();
                self.watch_stdin(ops);
            }
        }
    }
}
