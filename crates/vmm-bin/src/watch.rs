//! The binary's own event sources on the VM's event loop: the stop signals.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::path::{Path, PathBuf};

use petrel_vmm::snapshot::{SnapshotKind, SnapshotRequest};
use petrel_vmm::{error_chain, Timeline, VmmHandle};

use crate::signals::{self, StopSignals};

/// Stops the VM when SIGINT, SIGTERM or SIGHUP arrives (through its signalfd), and remembers
/// which one did first, for the end of the process; the signal itself stays pending (see
/// [`crate::signals`]). With a [`SnapshotOnSignal`], SIGUSR1 writes a snapshot.
#[derive(Debug)]
pub struct SignalWatcher {
    signals: Arc<StopSignals>,
    vmm: VmmHandle,
    timeline: Timeline,
    received: Arc<Mutex<Option<libc::c_int>>>,
    snapshot: Option<SnapshotOnSignal>,
}

/// What SIGUSR1 does (`--snapshot-on-signal DIR [--snapshot-keep-running]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOnSignal {
    /// Where `state` and `mem` go.
    pub dir: PathBuf,
    /// Resume the VM afterwards instead of stopping it.
    pub keep_running: bool,
}

impl SnapshotOnSignal {
    /// The state file in `dir`.
    pub fn state_path(dir: &Path) -> PathBuf {
        dir.join("state")
    }

    /// The memory file in `dir`.
    pub fn mem_path(dir: &Path) -> PathBuf {
        dir.join("mem")
    }

    /// Pauses the VM, writes a Full snapshot, then stops or resumes it; says what it did on
    /// stderr. A failure is reported and the VM goes on (resumed), since the guest is fine.
    fn take(&self, vmm: &VmmHandle, timeline: &Timeline) {
        let request = SnapshotRequest {
            kind: SnapshotKind::Full,
            state_path: Self::state_path(&self.dir),
            mem_path: Self::mem_path(&self.dir),
        };
        // The directory was created at start (the VMM thread's seccomp filter allows no mkdir).
        let result = vmm
            .pause()
            .map_err(|e| error_chain(&e))
            .and_then(|()| vmm.snapshot(&request).map_err(|e| error_chain(&e)));
        match result {
            Ok(report) => {
                timeline.mark("snapshot written");
                eprintln!(
                    "petrel: snapshot written to {} ({} MiB of memory data, {:.1} ms); \
                     restore it with `petrel restore {}`",
                    self.dir.display(),
                    report.mem_bytes >> 20,
                    report.took.as_secs_f64() * 1e3,
                    self.dir.display()
                );
                if self.keep_running {
                    let _ = vmm.resume();
                } else {
                    vmm.stop();
                }
            }
            Err(why) => {
                eprintln!("petrel: snapshot failed: {why}");
                let _ = vmm.resume();
            }
        }
    }
}

impl SignalWatcher {
    /// A watcher stopping `vmm`; the first stop signal goes into `received`.
    pub fn new(
        signals: Arc<StopSignals>,
        vmm: VmmHandle,
        timeline: Timeline,
        received: Arc<Mutex<Option<libc::c_int>>>,
        snapshot: Option<SnapshotOnSignal>,
    ) -> Self {
        SignalWatcher {
            signals,
            vmm,
            timeline,
            received,
            snapshot,
        }
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in self.signals.fds() {
            let _ = ops.add(Events::new_raw(fd, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if self.signals.is_snapshot_fd(fd) {
            while self.signals.take_snapshot_signal() {
                if let Some(s) = &self.snapshot {
                    s.take(&self.vmm, &self.timeline);
                }
            }
            return;
        }
        let Some(sig) = self.signals.stop_signal_of(fd) else {
            return;
        };
        // The signal stays pending (it ends the process at the end), so its descriptor stays
        // readable: watch it no more.
        let _ = ops.remove(events);
        let mut received = petrel_util::lock_ignoring_poison(&self.received);
        if received.is_none() {
            *received = Some(sig);
            self.timeline
                .mark(&format!("{} received", signals::name(sig)));
        }
        self.vmm.stop();
    }
}
