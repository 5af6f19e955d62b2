//! [`VmmHandle`]: what other threads (an API server, a signal handler's subscriber) do to a
//! running VM: pause, resume, stop, Ctrl-Alt-Del, swap a disk, change rate limits, read
//! statistics. Also what the handle and the VMM share ([`Shared`]), and the VM's life
//! ([`Lifecycle`]: its state, the vCPU threads, and the event that ends the VMM thread's loop).
//! Writing a snapshot, also the handle's, is in `save.rs`.

use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};

use petrel_devices::rtc::CmosRtc;
use petrel_devices::{Serial, I8042};
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::Vm;
use petrel_util::lock_ignoring_poison as lock;
use petrel_vcpu::{EmulationCounts, ExitStats, VcpuCommand, VcpuHandle, VcpuState};
use vmm_sys_util::eventfd::EventFd;

use super::vcpus::{sum_emulation, wait_for_all};
use super::{VmState, VCPU_STATS_TIMEOUT};
use crate::config::RateLimiterConfig;
use crate::io::PlatformIo;
use crate::kvm_view::KvmStatsReaders;
use crate::report::StatsDocument;
use crate::snapshot::SavedMachine;
use crate::virtio;
use crate::{Error, Result};

/// What the handle and the VMM share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) life: Lifecycle,
    pub(super) io: Arc<PlatformIo>,
    pub(super) kvm_stats: Arc<Mutex<KvmStatsReaders>>,
    pub(super) virtio_devices: Vec<virtio::AttachedDevice>,
    /// The keyboard controller (Linux guests only), for Ctrl-Alt-Del.
    pub(super) i8042: Option<Arc<Mutex<I8042>>>,
    /// The statistics of the vCPUs once they were joined.
    pub(super) final_stats: Mutex<Option<(Vec<ExitStats>, EmulationCounts)>>,
    /// What a snapshot reads beyond the above.
    pub(super) snap: SnapshotParts,
    /// Records the guest's working set, on request or when the VM ends (a restore with
    /// [`WorkingSetMode::Record`](crate::working_set::WorkingSetMode::Record)).
    pub(super) working_set: Option<crate::working_set::Recorder>,
}

/// The VM, its RAM and the devices a snapshot saves, and the machine's description (kept up to
/// date when a disk is swapped or a rate limit changes).
#[derive(Debug)]
pub(super) struct SnapshotParts {
    pub(super) vm: Mutex<Vm>,
    pub(super) ram: GuestRam,
    pub(super) machine: Mutex<SavedMachine>,
    pub(super) serial: Arc<Mutex<Serial>>,
    pub(super) rtc: Option<Arc<Mutex<CmosRtc>>>,
    /// The VM generation ID (Linux guests), saved with the devices.
    pub(super) vmgenid: Option<super::devices::GenerationIdDevice>,
    pub(super) dirty_tracking: bool,
}

/// Where the VM is in its life, and how the handle reaches the threads that run it: each vCPU
/// through its command channel, the VMM thread through `stop_evt`, which ends its event loop.
/// The vCPU lock is taken before the state lock, always.
#[derive(Debug)]
pub(super) struct Lifecycle {
    pub(super) state: Mutex<VmState>,
    /// The vCPU threads; empty before start and after they were joined.
    pub(super) vcpus: Mutex<Vec<VcpuHandle>>,
    /// Written to end the event loop ([`VmmHandle::stop`]).
    pub(super) stop_evt: EventFd,
}

impl Lifecycle {
    /// A VM not started yet, whose event loop ends when `stop_evt` is written.
    pub(super) fn new(stop_evt: EventFd) -> Self {
        Lifecycle {
            state: Mutex::new(VmState::NotStarted),
            vcpus: Mutex::new(Vec::new()),
            stop_evt,
        }
    }

    /// The VM's state.
    pub(super) fn state(&self) -> VmState {
        *lock(&self.state)
    }

    /// Moves a VM in state `from` to `to` (Paused or Running): every vCPU is told, then each
    /// must acknowledge. Under the vCPU lock, so a stop or another transition waits its turn.
    /// Already in `to` does nothing; in any state but `from` is [`Error::InvalidState`].
    pub(super) fn transition(&self, op: &'static str, from: VmState, to: VmState) -> Result<()> {
        let (command, ack) = match to {
            VmState::Paused => (VcpuCommand::Pause, VcpuState::Paused),
            _ => (VcpuCommand::Resume, VcpuState::Running),
        };
        let vcpus = lock(&self.vcpus);
        {
            let mut state = lock(&self.state);
            if *state == to {
                return Ok(());
            }
            if *state != from {
                return Err(Error::InvalidState { op, state: *state });
            }
            for h in vcpus.iter() {
                h.send(command).map_err(Error::Vcpu)?;
            }
            *state = to;
        }
        wait_for_all(&vcpus, ack)
    }

    /// Tells every vCPU to stop, marks a VM that never started stopped (so it never starts),
    /// and wakes the VMM thread's loop so that it ends.
    pub(super) fn stop(&self) {
        let vcpus = lock(&self.vcpus);
        for h in vcpus.iter() {
            let _ = h.send(VcpuCommand::Stop);
        }
        {
            let mut state = lock(&self.state);
            if *state == VmState::NotStarted {
                *state = VmState::Stopped;
            }
        }
        drop(vcpus);
        let _ = self.stop_evt.write(1);
    }
}

/// A cheap, cloneable, thread-safe handle on a VM: pause, resume, stop, state and statistics.
/// Every call is safe at any moment of the VM's life; a call that makes no sense in the current
/// state (pausing a VM that never started) is an [`Error::InvalidState`].
#[derive(Debug, Clone)]
pub struct VmmHandle {
    pub(super) shared: Arc<Shared>,
}

impl VmmHandle {
    /// The VM's state.
    pub fn state(&self) -> VmState {
        self.shared.life.state()
    }

    /// Parks every vCPU out of `KVM_RUN` and returns once each has acknowledged it. Pausing a
    /// paused VM does nothing.
    pub fn pause(&self) -> Result<()> {
        self.shared
            .life
            .transition("pause", VmState::Running, VmState::Paused)
    }

    /// Lets every vCPU enter the guest again after [`pause`](Self::pause). Resuming a running
    /// VM does nothing.
    pub fn resume(&self) -> Result<()> {
        self.shared
            .life
            .transition("resume", VmState::Paused, VmState::Running)
    }

    /// Asks the VM to stop: the event loop ends ([`Vmm::run_until_stopped`](crate::Vmm::run_until_stopped) returns) and every
    /// vCPU leaves its loop, wherever it was (running, halted, waiting for a SIPI, paused).
    /// A VM stopped before it started never starts. Returns at once; stopping twice is
    /// harmless.
    pub fn stop(&self) {
        self.shared.life.stop()
    }

    /// Presses and releases Ctrl-Alt-Del on the guest's keyboard (Firecracker's
    /// `SendCtrlAltDel`): a Linux guest reboots, which with `reboot=k` ends the VM.
    pub fn send_ctrl_alt_del(&self) -> Result<()> {
        let kbd = self.shared.i8042.as_ref().ok_or(Error::NoSuchDevice {
            what: "keyboard controller (a raw payload has none)",
            index: 0,
        })?;
        lock(kbd).send_ctrl_alt_del().map_err(Error::devices)
    }

    /// The `index`-th device of the kind `pick` selects (disks and network interfaces count in
    /// the order of the config).
    fn nth_device<T>(
        &self,
        what: &'static str,
        index: usize,
        pick: impl Fn(&virtio::DeviceHandle) -> Option<&T>,
    ) -> Result<&T> {
        self.shared
            .virtio_devices
            .iter()
            .filter_map(|d| pick(&d.handle))
            .nth(index)
            .ok_or(Error::NoSuchDevice { what, index })
    }

    /// Gives disk `index` (in the order of [`VmConfig::disks`](crate::VmConfig::disks)) a new backing file, opened as
    /// the disk was (read-only or read-write); the guest gets a configuration-change interrupt
    /// and sees the new capacity. Firecracker's `PATCH /drives/{id}` with a `path_on_host`.
    pub fn replace_disk(&self, index: usize, path: &std::path::Path) -> Result<()> {
        let disk = self.nth_device("disk", index, |h| match h {
            virtio::DeviceHandle::Block(b) => Some(b),
            _ => None,
        })?;
        let mut transport = lock(disk);
        let read_only = transport.device().read_only();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| Error::InvalidConfig {
                field: format!("disks[{index}].path"),
                value: path.display().to_string(),
                why: e.to_string(),
            })?;
        transport
            .device_mut()
            .replace_backing_file(file)
            .map_err(Error::devices)?;
        transport.device_mut().set_path(path);
        transport.notify_config_change();
        if let Some(d) = lock(&self.shared.snap.machine).disks.get_mut(index) {
            d.path = path.to_path_buf();
        }
        Ok(())
    }

    /// New rate limits for disk `index` (Firecracker's `PATCH /drives/{id}` `rate_limiter`).
    pub fn set_disk_rate_limit(&self, index: usize, limit: RateLimiterConfig) -> Result<()> {
        let disk = self.nth_device("disk", index, |h| match h {
            virtio::DeviceHandle::Block(b) => Some(b),
            _ => None,
        })?;
        lock(disk).device_mut().set_rate_limiter(&limit);
        if let Some(d) = lock(&self.shared.snap.machine).disks.get_mut(index) {
            d.rate_limit = limit;
        }
        Ok(())
    }

    /// New rate limits for network interface `index`, each direction.
    pub fn set_net_rate_limits(
        &self,
        index: usize,
        rx: RateLimiterConfig,
        tx: RateLimiterConfig,
    ) -> Result<()> {
        let net = self.nth_device("network interface", index, |h| match h {
            virtio::DeviceHandle::Net(n) => Some(n),
            _ => None,
        })?;
        lock(net).device_mut().set_rate_limiters(&rx, &tx);
        if let Some(n) = lock(&self.shared.snap.machine).nets.get_mut(index) {
            n.rx_rate_limit = rx;
            n.tx_rate_limit = tx;
        }
        Ok(())
    }
    /// Saves the pages the guest has touched since its restore as the snapshot's working set,
    /// now (`PUT /snapshot/working-set`), for a VM restored with
    /// [`WorkingSetMode::Record`](crate::working_set::WorkingSetMode::Record); the set is then
    /// not saved again when the VM ends. Any other VM answers why it cannot.
    pub fn save_working_set(&self) -> std::result::Result<crate::working_set::Recorded, String> {
        match &self.shared.working_set {
            Some(recorder) => recorder.record(&self.shared.snap.ram),
            None => Err(
                "this VM keeps no record of its working set: it was not restored from \
                         a snapshot with --working-set record"
                    .into(),
            ),
        }
    }

    /// Exit statistics so far, of every vCPU, with the devices' counters and KVM's own. While
    /// the VM runs each vCPU is asked for its figures (a kick: the guest leaves `KVM_RUN` for a
    /// moment); a vCPU that does not answer within [`VCPU_STATS_TIMEOUT`] is left out.
    pub fn stats(&self) -> StatsDocument {
        let finished = lock(&self.shared.final_stats).clone();
        let (per_vcpu, emulation) = match finished {
            Some(done) => done,
            None => {
                let answers: Vec<(ExitStats, EmulationCounts)> = lock(&self.shared.life.vcpus)
                    .iter()
                    .filter_map(|h| h.stats(VCPU_STATS_TIMEOUT))
                    .collect();
                let emulation = sum_emulation(answers.iter().map(|(_, e)| e));
                (answers.into_iter().map(|(s, _)| s).collect(), emulation)
            }
        };
        self.document(&per_vcpu, emulation)
    }

    fn document(&self, per_vcpu: &[ExitStats], emulation: EmulationCounts) -> StatsDocument {
        let mut total = ExitStats::default();
        for s in per_vcpu {
            total.merge(s);
        }
        let io = &self.shared.io;
        let mut kvm = lock(&self.shared.kvm_stats);
        StatsDocument {
            total: total.report(crate::report::TOP),
            per_vcpu: per_vcpu
                .iter()
                .map(|s| s.report(crate::report::TOP))
                .collect(),
            unclaimed_port_reads: io.pio.unclaimed_reads(),
            unclaimed_port_writes: io.pio.unclaimed_writes(),
            unclaimed_mmio_reads: io.mmio.unclaimed_reads(),
            unclaimed_mmio_writes: io.mmio.unclaimed_writes(),
            int3_injected: emulation.int3_injected,
            fwait_skipped: emulation.fwait_skipped,
            kvm: kvm.read(),
            kvm_unavailable: kvm.unavailable.clone(),
            virtio: self
                .shared
                .virtio_devices
                .iter()
                .map(|d| d.report())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use super::*;
    use crate::event_loop::{Controller, LoopEnd};

    fn lifecycle() -> Lifecycle {
        Lifecycle::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn pause_and_resume_are_refused_before_the_start_naming_the_state() {
        let life = lifecycle();
        let e = life
            .transition("pause", VmState::Running, VmState::Paused)
            .unwrap_err();
        assert_eq!(e.to_string(), "cannot pause: the VM is Not started");
        let e = life
            .transition("resume", VmState::Paused, VmState::Running)
            .unwrap_err();
        assert_eq!(e.to_string(), "cannot resume: the VM is Not started");
        assert_eq!(life.state(), VmState::NotStarted);
    }

    #[test]
    fn pause_and_resume_move_a_running_vm_and_repeat_harmlessly() {
        let life = lifecycle();
        *lock(&life.state) = VmState::Running;
        let pause = || life.transition("pause", VmState::Running, VmState::Paused);
        let resume = || life.transition("resume", VmState::Paused, VmState::Running);
        resume().unwrap();
        assert_eq!(life.state(), VmState::Running);
        pause().unwrap();
        assert_eq!(life.state(), VmState::Paused);
        pause().unwrap();
        assert_eq!(life.state(), VmState::Paused);
        resume().unwrap();
        assert_eq!(life.state(), VmState::Running);
        *lock(&life.state) = VmState::Stopped;
        let e = pause().unwrap_err();
        assert_eq!(e.to_string(), "cannot pause: the VM is Stopped");
    }

    #[test]
    fn a_stop_before_the_start_means_the_vm_never_starts() {
        let life = lifecycle();
        life.stop();
        assert_eq!(life.state(), VmState::Stopped);
        life.stop();
        assert_eq!(life.state(), VmState::Stopped);
        // Each stop wrote the event the VMM thread's loop waits for.
        assert_eq!(life.stop_evt.read().unwrap(), 2);
    }

    #[test]
    fn a_stop_from_another_thread_ends_the_vmm_threads_loop() {
        let life = Arc::new(lifecycle());
        *lock(&life.state) = VmState::Running;
        let vcpu_exited = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let controller = Arc::new(Mutex::new(Controller::new(
            vcpu_exited,
            life.stop_evt.try_clone().unwrap(),
        )));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(controller.clone());
        em.run_with_timeout(0).unwrap();
        assert_eq!(lock(&controller).end, None);
        let stopper = {
            let life = life.clone();
            std::thread::spawn(move || life.stop())
        };
        while lock(&controller).end.is_none() {
            em.run_with_timeout(5000).unwrap();
        }
        stopper.join().unwrap();
        assert_eq!(lock(&controller).end, Some(LoopEnd::StopRequested));
        // The state of a started VM is the run loop's to change, once the vCPUs are joined.
        assert_eq!(life.state(), VmState::Running);
    }
}
