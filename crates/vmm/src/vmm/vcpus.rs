//! The vCPUs: creating and configuring them (CPUID, boot MSRs, FPU, LAPIC, the boot state and a
//! raw payload's preset registers), starting one thread each ([`Vmm::start`],
//! [`Vmm::start_paused`]), waiting for their acknowledgements, and stopping and joining them.

use std::sync::Arc;

use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{Hypervisor, Vm};
use petrel_util::lock_ignoring_poison as lock;
use petrel_vcpu::{
    cpuid, setup, EmulationCounts, RunOptions, VcpuCommand, VcpuHandle, VcpuOutcome, VcpuRunner,
    VcpuState,
};

use super::build::Loaded;
use super::{VmState, Vmm, VCPU_ACK_TIMEOUT, VCPU_JOIN_TIMEOUT};
use crate::config::{Payload, RawPayload, Reg, VmConfig};
use crate::io::PlatformIo;
use crate::kvm_view::KvmStatsReaders;
use crate::{Error, Result};

impl Vmm {
    /// Starts one thread per vCPU; the boot vCPU enters the guest at once, the others wait in
    /// KVM for the guest's INIT/SIPI. Fails if the VM was started before.
    pub fn start(&mut self) -> Result<()> {
        self.start_as(VmState::Running)
    }

    /// Starts one thread per vCPU, each parked before it enters the guest: the VM is
    /// [`VmState::Paused`] when this returns (every vCPU has acknowledged it), and
    /// [`VmmHandle::resume`](crate::VmmHandle::resume) lets it run. For a restored VM that should stay paused.
    pub fn start_paused(&mut self) -> Result<()> {
        for r in &mut self.runners {
            r.set_start_paused(true);
        }
        self.start_as(VmState::Paused)?;
        let vcpus = lock(&self.shared.life.vcpus);
        wait_for_all(&vcpus, VcpuState::Paused)
    }

    fn start_as(&mut self, running_state: VmState) -> Result<()> {
        let mut exited = Vec::with_capacity(self.runners.len());
        for _ in &self.runners {
            exited.push(self.vcpu_exited.try_clone().map_err(Error::EventFd)?);
        }
        let shared = self.shared.clone();
        let mut failed = None;
        {
            // Under the vCPU lock, so a concurrent stop() sees either no vCPU and a VM it
            // marks stopped (then this refuses), or every vCPU and a running VM.
            let mut vcpus = lock(&shared.life.vcpus);
            let state = *lock(&shared.life.state);
            if self.runners.is_empty() || state != VmState::NotStarted {
                return Err(Error::InvalidState { op: "start", state });
            }
            for (runner, exited) in self.runners.drain(..).zip(exited) {
                let name = format!("{}{}", self.vcpu_thread_prefix, runner.vcpu().id());
                match petrel_vcpu::spawn_named(runner, exited, name) {
                    Ok(h) => vcpus.push(h),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            *lock(&shared.life.state) = running_state;
        }
        if let Some(e) = failed {
            // Leave nothing half-started: the threads already running are stopped and joined.
            self.runners.clear();
            self.shutdown_vcpus();
            return Err(Error::Vcpu(e));
        }
        self.timeline.mark("vCPUs created and started");
        Ok(())
    }

    /// Stops and joins every vCPU thread; records their statistics. Returns their outcomes,
    /// sorted by vCPU, and the id of one that did not stop in time, if any.
    pub(super) fn shutdown_vcpus(&mut self) -> (Vec<VcpuOutcome>, Option<u64>) {
        let handles: Vec<VcpuHandle> = std::mem::take(&mut *lock(&self.shared.life.vcpus));
        for h in &handles {
            let _ = h.send(VcpuCommand::Stop);
        }
        let mut outcomes = Vec::with_capacity(handles.len());
        let mut stuck = None;
        for mut h in handles {
            match h.join(VCPU_JOIN_TIMEOUT) {
                Some(o) => outcomes.push(o),
                None => stuck = Some(h.id()),
            }
        }
        outcomes.sort_by_key(|o| o.id);
        let emulation = sum_emulation(outcomes.iter().map(|o| &o.emulation));
        let per_vcpu = outcomes.iter().map(|o| o.stats.clone()).collect();
        *lock(&self.shared.final_stats) = Some((per_vcpu, emulation));
        *lock(&self.shared.life.state) = VmState::Stopped;
        (outcomes, stuck)
    }
}

/// Waits for every vCPU to report `want` (or to have exited).
pub(super) fn wait_for_all(vcpus: &[VcpuHandle], want: VcpuState) -> Result<()> {
    for h in vcpus {
        let reached = h.wait_for(VCPU_ACK_TIMEOUT, |s| s == want || s == VcpuState::Exited);
        if reached != want && reached != VcpuState::Exited {
            return Err(Error::VcpuUnresponsive {
                id: h.id(),
                want: format!("{want:?}"),
            });
        }
    }
    Ok(())
}

/// Creates and configures every vCPU without starting any, so a failure starts nothing.
pub(super) fn create_vcpus(
    hv: &Hypervisor,
    vm: &Vm,
    ram: &GuestRam,
    io: &Arc<PlatformIo>,
    loaded: &Loaded,
    config: &VmConfig,
    kvm_stats: &mut KvmStatsReaders,
) -> Result<Vec<VcpuRunner<PlatformIo>>> {
    let supported = hv.supported_cpuid()?;
    let mut runners = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(u64::from(id))?;
        let mut c = supported.clone();
        cpuid::normalize(&mut c, id, config.vcpus);
        vcpu.set_cpuid(&c)?;
        if loaded.linux {
            setup::setup_boot_msrs(&vcpu).map_err(Error::Vcpu)?;
            setup::setup_fpu(&vcpu).map_err(Error::Vcpu)?;
            setup::setup_lapic_lints(&vcpu).map_err(Error::Vcpu)?;
        }
        // Application processors wait in KVM for INIT/SIPI from the boot processor.
        if id == 0 {
            setup::apply_boot_state(&vcpu, &loaded.boot).map_err(Error::Vcpu)?;
            if let Payload::Raw(raw) = &config.payload {
                apply_raw_regs(&vcpu, raw)?;
            }
        }
        let options = RunOptions {
            max_exits: config.max_exits,
        };
        kvm_stats.add_vcpu(&vcpu);
        runners.push(VcpuRunner::new(vcpu, io.clone(), ram.clone(), options));
    }
    Ok(runners)
}

fn apply_raw_regs(vcpu: &petrel_hv_sys::Vcpu, raw: &RawPayload) -> Result<()> {
    if raw.regs.is_empty() {
        return Ok(());
    }
    let mut regs = vcpu.regs()?;
    for a in &raw.regs {
        *register_slot(&mut regs, a.reg) = a.value;
    }
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// Where `reg` lives in KVM's register file (hv-sys's [`Vcpu::regs`](petrel_hv_sys::Vcpu::regs)).
fn register_slot(regs: &mut petrel_hv_sys::kvm_bindings::kvm_regs, reg: Reg) -> &mut u64 {
    match reg {
        Reg::Rax => &mut regs.rax,
        Reg::Rbx => &mut regs.rbx,
        Reg::Rcx => &mut regs.rcx,
        Reg::Rdx => &mut regs.rdx,
        Reg::Rsi => &mut regs.rsi,
        Reg::Rdi => &mut regs.rdi,
        Reg::Rsp => &mut regs.rsp,
        Reg::Rbp => &mut regs.rbp,
        Reg::R8 => &mut regs.r8,
        Reg::R9 => &mut regs.r9,
        Reg::R10 => &mut regs.r10,
        Reg::R11 => &mut regs.r11,
        Reg::R12 => &mut regs.r12,
        Reg::R13 => &mut regs.r13,
        Reg::R14 => &mut regs.r14,
        Reg::R15 => &mut regs.r15,
    }
}

/// The instructions completed for the host's emulator, summed over the vCPUs.
pub(super) fn sum_emulation<'a>(
    each: impl IntoIterator<Item = &'a EmulationCounts>,
) -> EmulationCounts {
    each.into_iter()
        .fold(EmulationCounts::default(), |sum, e| EmulationCounts {
            int3_injected: sum.int3_injected + e.int3_injected,
            fwait_skipped: sum.fwait_skipped + e.fwait_skipped,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_register_has_its_own_slot() {
        let mut r = petrel_hv_sys::kvm_bindings::kvm_regs::default();
        for (i, (_, reg)) in Reg::NAMES.iter().enumerate() {
            *register_slot(&mut r, *reg) = i as u64 + 1;
        }
        let got = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        assert_eq!(got, std::array::from_fn(|i| i as u64 + 1));
        assert_eq!((r.rip, r.rflags), (0, 0));
    }

    #[test]
    fn emulation_counts_sum_over_the_vcpus() {
        let each = [
            EmulationCounts {
                int3_injected: 2,
                fwait_skipped: 1,
            },
            EmulationCounts {
                int3_injected: 5,
                fwait_skipped: 0,
            },
        ];
        let sum = sum_emulation(&each);
        assert_eq!((sum.int3_injected, sum.fwait_skipped), (7, 1));
        assert_eq!(sum_emulation(&[]), EmulationCounts::default());
    }

    #[test]
    fn no_vcpus_have_nothing_to_acknowledge() {
        wait_for_all(&[], VcpuState::Paused).unwrap();
    }
}
