//! Running a built VM to its end: [`Vmm::run_until_stopped`] runs the event loop on the calling
//! thread until a vCPU stops or someone asks for a stop, then stops and joins the vCPUs,
//! flushes the console and sums the run up in a [`RunSummary`]; [`run`] builds and runs a VM in
//! one call.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use petrel_util::{lock_ignoring_poison as lock, panic_message};
use petrel_vcpu::{StopReason, VcpuOutcome};

use super::{VmState, Vmm};
use crate::config::VmConfig;
use crate::event_loop::LoopEnd;
use crate::report::StatsDocument;
use crate::timeline::Timeline;
use crate::{Error, Result};

/// How a VM ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Why the VM stopped (the first vCPU to stop for its own reason decides; a stop through
    /// [`VmmHandle::stop`](crate::VmmHandle::stop) is [`StopReason::Requested`]).
    pub stop: StopReason,
    /// Exit statistics of every vCPU.
    pub stats: StatsDocument,
    /// What happened when.
    pub timeline: Timeline,
    /// The working set saved when the VM ended, or why it could not be; `None` unless the VM
    /// was restored with [`WorkingSetMode::Record`](crate::working_set::WorkingSetMode::Record),
    /// or when the set was saved on request before ([`VmmHandle::save_working_set`](crate::VmmHandle::save_working_set)).
    pub working_set: Option<std::result::Result<crate::working_set::Recorded, String>>,
}

impl RunSummary {
    /// The process exit code: 0 for a guest that halted, reset, powered off or ran to its exit
    /// limit, and for a requested stop; 1 for a guest fault or a VMM error.
    pub fn exit_code(&self) -> i32 {
        match self.stop {
            StopReason::Halted
            | StopReason::Reset
            | StopReason::PowerOff
            | StopReason::ExitLimit(_)
            | StopReason::Requested => crate::EXIT_OK,
            StopReason::GuestFault { .. } | StopReason::VmmError(_) => crate::EXIT_FAILURE,
        }
    }
}

impl Vmm {
    /// Runs the event loop on this thread (starting the VM first if it was neither started nor
    /// stopped) until
    /// a vCPU stops (the guest reset, powered off, faulted, hit its exit limit) or
    /// [`VmmHandle::stop`](crate::VmmHandle::stop) is called; then stops and joins every vCPU and flushes the console.
    ///
    /// Device work runs here; a panic in it stops the VM with [`StopReason::VmmError`] instead
    /// of unwinding into the caller.
    pub fn run_until_stopped(mut self) -> Result<RunSummary> {
        if self.handle().state() == VmState::NotStarted {
            self.start()?;
        }
        // A VM stopped before it started ends here: its stop event is already written.
        let mut loop_error = None;
        let mut panicked = None;
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.em.run())) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    loop_error = Some(Error::EventLoop(e));
                    break;
                }
                Err(p) => {
                    panicked = Some(format!(
                        "device work on the event loop panicked: {}",
                        panic_message(&*p)
                    ));
                    break;
                }
            }
            match lock(&self.controller).end {
                Some(LoopEnd::VcpuExited) => {
                    self.timeline.mark("guest stopped");
                    break;
                }
                Some(LoopEnd::StopRequested) => {
                    self.timeline.mark("stop requested");
                    break;
                }
                None => {}
            }
        }
        let (outcomes, stuck) = self.shutdown_vcpus();
        if let Some(c) = self.console.take() {
            let _ = c.thread.flush_and_join_timeout(Duration::from_secs(2));
        }
        self.timeline.mark("vCPUs joined, console flushed");
        // The guest touches no more memory: its working set is complete (unless one was saved
        // on request, which is the one wanted).
        let working_set = self
            .shared
            .working_set
            .as_ref()
            .filter(|r| !r.saved())
            .map(|r| r.record(&self.shared.snap.ram));
        if let Some(e) = loop_error {
            return Err(e);
        }
        // Before a stuck vCPU: one waiting for a page the handler will never serve is stuck
        // because of it.
        if let Some(e) = self.page_faults.as_ref().and_then(|p| p.gone()) {
            return Err(e);
        }
        if let Some(id) = stuck {
            return Err(Error::VcpuStuck { id });
        }
        if let Some(at) = outcomes.first().and_then(|o| o.first_run_at) {
            self.timeline.mark_at("first KVM_RUN", at);
        }
        if let Some(at) = lock(&self.serial).first_output_at() {
            self.timeline.mark_at("first serial byte", at);
        }
        let stop = stop_reason(panicked, &outcomes);
        Ok(RunSummary {
            stop,
            stats: self.handle().stats(),
            timeline: self.timeline.clone(),
            working_set,
        })
    }
}

/// Builds the VM `config` describes and runs it until it stops (build, start, run the event
/// loop on this thread). A convenience over [`Vmm`].
pub fn run(config: &VmConfig) -> Result<RunSummary> {
    Vmm::build(config)?.run_until_stopped()
}

/// Why the VM stopped: a panic of device work on the event loop if there was one, else the
/// first vCPU (by id) that stopped for its own reason, else a requested stop.
fn stop_reason(panicked: Option<String>, outcomes: &[VcpuOutcome]) -> StopReason {
    panicked.map(StopReason::VmmError).unwrap_or_else(|| {
        outcomes
            .iter()
            .map(|o| &o.stop)
            .find(|s| !matches!(s, StopReason::Requested))
            .cloned()
            .unwrap_or(StopReason::Requested)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_vcpu::{EmulationCounts, ExitStats};

    fn outcome(id: u64, stop: StopReason) -> VcpuOutcome {
        VcpuOutcome {
            id,
            stop,
            stats: ExitStats::default(),
            emulation: EmulationCounts::default(),
            first_run_at: None,
        }
    }

    #[test]
    fn the_first_vcpu_that_stopped_for_its_own_reason_decides() {
        let outcomes = [
            outcome(0, StopReason::Requested),
            outcome(1, StopReason::PowerOff),
            outcome(2, StopReason::Reset),
        ];
        assert_eq!(stop_reason(None, &outcomes), StopReason::PowerOff);
        let all_asked = [outcome(0, StopReason::Requested)];
        assert_eq!(stop_reason(None, &all_asked), StopReason::Requested);
        assert_eq!(stop_reason(None, &[]), StopReason::Requested);
        // A panic of device work on the event loop outranks what the vCPUs say.
        assert_eq!(
            stop_reason(Some("boom".into()), &outcomes),
            StopReason::VmmError("boom".into())
        );
    }

    #[test]
    fn exit_code_is_zero_for_an_orderly_end_and_one_for_a_fault() {
        let code = |stop| {
            RunSummary {
                stop,
                stats: StatsDocument {
                    total: ExitStats::default().report(1),
                    per_vcpu: vec![],
                    unclaimed_port_reads: 0,
                    unclaimed_port_writes: 0,
                    unclaimed_mmio_reads: 0,
                    unclaimed_mmio_writes: 0,
                    int3_injected: 0,
                    fwait_skipped: 0,
                    kvm: None,
                    kvm_unavailable: None,
                    virtio: vec![],
                },
                timeline: Timeline::new(std::time::Instant::now()),
                working_set: None,
            }
            .exit_code()
        };
        for ok in [
            StopReason::Halted,
            StopReason::Reset,
            StopReason::PowerOff,
            StopReason::ExitLimit(10),
            StopReason::Requested,
        ] {
            assert_eq!(code(ok.clone()), crate::EXIT_OK, "{ok:?}");
        }
        let fault = StopReason::GuestFault {
            what: "triple fault".into(),
            details: String::new(),
        };
        assert_eq!(code(fault), crate::EXIT_FAILURE);
        assert_eq!(code(StopReason::VmmError("x".into())), crate::EXIT_FAILURE);
    }
}
