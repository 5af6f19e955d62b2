//! The VM as an object: [`Vmm::build`] checks and loads everything a [`VmConfig`] names and
//! creates the VM without running anything; [`Vmm::start`] starts one thread per vCPU;
//! [`Vmm::run_until_stopped`] runs the event loop on the calling thread until the guest or
//! someone holding a [`VmmHandle`] stops it, then stops and joins every vCPU.
//!
//! The order matters: everything the user gave (memory size, files, command line, vCPU count)
//! is checked and loaded before any thread starts, so bad input leaves nothing behind. A
//! [`VmmHandle`] (cheap to clone, `Send + Sync`) pauses, resumes, stops and inspects the VM
//! from the event loop or any other thread. The library leaves process-wide state alone: no
//! signal masks or handlers (other than the vCPU kick signal), no terminal modes, no panic
//! hooks, no reading of stdin; the binary (or another embedder) owns those and plugs its own
//! event sources into the loop with [`Vmm::add_subscriber`].

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberId, SubscriberOps};
use petrel_devices::port80::{PostCodeSink, POST_CODE_PORT, POST_CODE_PORT_LEN};
use petrel_devices::rtc::{CmosRtc, SystemClock, RTC_BASE, RTC_PORT_LEN};
use petrel_devices::SERIAL_PORT_LEN;
use petrel_devices::{BusBuilder, BusDevice, BusRange, NonBlockingWriter, OutputThread, Serial};
use petrel_devices::{COM1_BASE, COM1_IRQ, I8042, I8042_BASE, I8042_KBD_IRQ, I8042_PORT_LEN};
use petrel_guest_mem::{FileId, GuestRam};
use petrel_hv_sys::{host_emulates_guest_kernel, Hypervisor, Vm};
use petrel_loader::BootCpuState;
use petrel_util::{lock_ignoring_poison as lock, panic_message};
use petrel_vcpu::{
    cpuid, setup, EmulationCounts, ExitStats, RunOptions, StopReason, VcpuCommand, VcpuHandle,
    VcpuOutcome, VcpuRunner, VcpuState,
};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::boot_timer::{BootTimer, BOOT_TIMER_ADDR, BOOT_TIMER_LEN};
use crate::config::{
    BootProtocol, KernelImage, LinuxPayload, Payload, RateLimiterConfig, RawPayload, Reg,
    SerialConfig, VmConfig, DEFAULT_CMDLINE, EMULATED_HOST_CMDLINE,
};
use crate::console::SerialInput;
use crate::debug_port::{DebugPort, DEBUG_PORT, DEBUG_PORT_LEN};
use crate::event_loop::{Controller, LoopEnd};
use crate::io::PlatformIo;
use crate::kvm_view::KvmStatsReaders;
use crate::metrics::{PeriodicMetrics, METRICS_INTERVAL};
use crate::report::StatsDocument;
use crate::snapshot::{
    RestoreConfig, SavedDevices, SavedMachine, SnapshotKind, SnapshotReport, SnapshotRequest,
    SnapshotState, StagedFile,
};
use crate::timeline::Timeline;
use crate::virtio::{self, VirtioPlan};
use crate::{Error, Result};

/// How long the VMM waits for a vCPU thread to leave its loop once told to stop.
pub const VCPU_JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pause or resume waits for each vCPU to acknowledge it.
pub const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a statistics query waits for each running vCPU's answer.
pub const VCPU_STATS_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of guest console output buffered before output is dropped (never blocks a vCPU).
pub const SERIAL_OUTPUT_BUFFER: usize = 1 << 20;

/// An event-loop subscriber as the VMM's event manager holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VmState {
    /// Built, no vCPU has run yet.
    NotStarted,
    /// The vCPUs run the guest.
    Running,
    /// Every vCPU is parked out of `KVM_RUN`.
    Paused,
    /// The VM ended; its vCPU threads are gone (or going).
    Stopped,
}

impl VmState {
    /// The name Firecracker's API uses for this state (`GET /`'s `state`).
    pub fn api_name(self) -> &'static str {
        match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Stopped => "Stopped",
        }
    }
}

/// Something [`Vmm::build`] found that the user should be told about, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The host's KVM runs guest kernel code in its instruction emulator (PVM), and the
    /// guest's command line got the workarounds it needs there ([`VmConfig::host_compat`]
    /// turns them off).
    EmulatedHostWorkarounds,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::EmulatedHostWorkarounds => f.write_str(
                "this host's KVM runs guest kernel code in its instruction emulator (PVM): \
                 expect a slow guest; added guest workarounds to the command line (CPU \
                 features the emulator lacks turned off; clearcpuid=110,111: no 32-bit \
                 SYSCALL or SYSENTER, so 32-bit programs use int $0x80; pty.legacy_count=0: no legacy BSD ptys, \
                 40 s of boot there)",
            ),
        }
    }
}

/// How a VM ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Why the VM stopped (the first vCPU to stop for its own reason decides; a stop through
    /// [`VmmHandle::stop`] is [`StopReason::Requested`]).
    pub stop: StopReason,
    /// Exit statistics of every vCPU.
    pub stats: StatsDocument,
    /// What happened when.
    pub timeline: Timeline,
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

/// What the handle and the VMM share.
#[derive(Debug)]
struct Shared {
    state: Mutex<VmState>,
    /// The vCPU threads; empty before start and after they were joined.
    vcpus: Mutex<Vec<VcpuHandle>>,
    /// Written to end the event loop ([`VmmHandle::stop`]).
    stop_evt: EventFd,
    io: Arc<PlatformIo>,
    kvm_stats: Arc<Mutex<KvmStatsReaders>>,
    virtio_devices: Vec<virtio::AttachedDevice>,
    /// The keyboard controller (Linux guests only), for Ctrl-Alt-Del.
    i8042: Option<Arc<Mutex<I8042>>>,
    /// The statistics of the vCPUs once they were joined.
    final_stats: Mutex<Option<(Vec<ExitStats>, EmulationCounts)>>,
    /// What a snapshot reads beyond the above.
    snap: SnapshotParts,
}

/// The VM, its RAM and the devices a snapshot saves, and the machine's description (kept up to
/// date when a disk is swapped or a rate limit changes).
#[derive(Debug)]
struct SnapshotParts {
    vm: Mutex<Vm>,
    ram: GuestRam,
    machine: Mutex<SavedMachine>,
    serial: Arc<Mutex<Serial>>,
    rtc: Option<Arc<Mutex<CmosRtc>>>,
    dirty_tracking: bool,
}

/// A cheap, cloneable, thread-safe handle on a VM: pause, resume, stop, state and statistics.
/// Every call is safe at any moment of the VM's life; a call that makes no sense in the current
/// state (pausing a VM that never started) is an [`Error::InvalidState`].
#[derive(Debug, Clone)]
pub struct VmmHandle {
    shared: Arc<Shared>,
}

impl VmmHandle {
    /// The VM's state.
    pub fn state(&self) -> VmState {
        *lock(&self.shared.state)
    }

    /// Parks every vCPU out of `KVM_RUN` and returns once each has acknowledged it. Pausing a
    /// paused VM does nothing.
    pub fn pause(&self) -> Result<()> {
        self.transition("pause", VmState::Running, VmState::Paused)
    }

    /// Lets every vCPU enter the guest again after [`pause`](Self::pause). Resuming a running
    /// VM does nothing.
    pub fn resume(&self) -> Result<()> {
        self.transition("resume", VmState::Paused, VmState::Running)
    }

    /// Moves a VM in state `from` to `to` (Paused or Running): every vCPU is told, then each
    /// must acknowledge. Under the vCPU lock, so a stop or another transition waits its turn.
    fn transition(&self, op: &'static str, from: VmState, to: VmState) -> Result<()> {
        let (command, ack) = match to {
            VmState::Paused => (VcpuCommand::Pause, VcpuState::Paused),
            _ => (VcpuCommand::Resume, VcpuState::Running),
        };
        let vcpus = lock(&self.shared.vcpus);
        {
            let mut state = lock(&self.shared.state);
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

    /// Asks the VM to stop: the event loop ends ([`Vmm::run_until_stopped`] returns) and every
    /// vCPU leaves its loop, wherever it was (running, halted, waiting for a SIPI, paused).
    /// A VM stopped before it started never starts. Returns at once; stopping twice is
    /// harmless.
    pub fn stop(&self) {
        let vcpus = lock(&self.shared.vcpus);
        for h in vcpus.iter() {
            let _ = h.send(VcpuCommand::Stop);
        }
        {
            let mut state = lock(&self.shared.state);
            if *state == VmState::NotStarted {
                *state = VmState::Stopped;
            }
        }
        drop(vcpus);
        let _ = self.shared.stop_evt.write(1);
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

    /// Gives disk `index` (in the order of [`VmConfig::disks`]) a new backing file, opened as
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

    /// Writes a snapshot of the paused VM: the state file (every vCPU, the irqchip, PIT and
    /// clock, every device, the machine's description) and the memory file (all of RAM for
    /// [`SnapshotKind::Full`], the pages written since the last snapshot for
    /// [`SnapshotKind::Diff`], which needs dirty tracking). The VM stays paused. Every virtio
    /// device is held still (locked) from its state being read until the memory is written, so
    /// the two agree even when this is called from another thread than the event loop. Both
    /// files are written under a temporary name and renamed over the names asked for, so a
    /// memory file a VM maps (this one's, restored from it, or another's) is never written
    /// into; a Diff naming the memory file this VM was restored from is
    /// [`Error::DiffOverMappedMemory`].
    pub fn snapshot(&self, request: &SnapshotRequest) -> Result<SnapshotReport> {
        let started = Instant::now();
        let vcpus = lock(&self.shared.vcpus);
        let state = *lock(&self.shared.state);
        if state != VmState::Paused {
            return Err(Error::InvalidState {
                op: "take a snapshot (pause the VM first)",
                state,
            });
        }
        let snap = &self.shared.snap;
        if request.kind == SnapshotKind::Diff && !snap.dirty_tracking {
            return Err(Error::DirtyPagesNotTracked);
        }
        let mem_path = &request.mem_path;
        if request.kind == SnapshotKind::Diff {
            // A Diff replacing the file it applies to would leave only the pages it holds.
            // (A Full one may: the new file is renamed over the name, and this VM keeps
            // mapping the old one.) Compared by device and inode: any name reaches the file.
            let target = FileId::of_path(mem_path).ok().flatten();
            if target.is_some() && target == snap.ram.backing_file() {
                return Err(Error::DiffOverMappedMemory {
                    path: mem_path.clone(),
                });
            }
        }
        let mut saved_vcpus = Vec::with_capacity(vcpus.len());
        for h in vcpus.iter() {
            saved_vcpus.push(h.save_state(VCPU_ACK_TIMEOUT).map_err(Error::Vcpu)?);
        }
        let machine = lock(&snap.machine).clone();
        let vm = lock(&snap.vm);
        let vm_state = if machine.linux {
            Some(vm.save_state()?)
        } else {
            None
        };
        let held: Vec<virtio::HeldDevice<'_>> = self
            .shared
            .virtio_devices
            .iter()
            .map(|d| d.hold())
            .collect();
        let devices = SavedDevices {
            serial: lock(&snap.serial).save_state(),
            i8042: self.shared.i8042.as_ref().map(|k| lock(k).save_state()),
            rtc: snap.rtc.as_ref().map(|r| lock(r).save_state()),
            virtio: held.iter().map(|d| d.save_state()).collect(),
        };
        let body = SnapshotState {
            petrel_version: env!("CARGO_PKG_VERSION").to_string(),
            machine,
            vm: vm_state,
            vcpus: saved_vcpus,
            devices,
        };
        let write_err = |path: &std::path::Path, why: String| Error::SnapshotWrite {
            path: path.to_path_buf(),
            why,
        };
        let staged =
            StagedFile::create(mem_path).map_err(|e| write_err(mem_path, e.to_string()))?;
        let mem_file = staged.file();
        let mem_bytes = match request.kind {
            SnapshotKind::Full => {
                if snap.dirty_tracking {
                    // The next Diff is relative to this copy: forget what KVM logged so far.
                    vm.dirty_pages()?;
                }
                snap.ram.write_full(mem_file)
            }
            SnapshotKind::Diff => {
                let dirty = vm.dirty_pages()?;
                snap.ram.write_dirty(mem_file, &dirty)
            }
        }
        .map_err(|e| write_err(mem_path, crate::error_chain(&e)))?;
        drop(held);
        // Both files replace their names only once both are written (the memory file, staged,
        // is removed if the state file fails).
        petrel_snapshot::write_file(&request.state_path, &body)
            .map_err(|e| write_err(&request.state_path, crate::error_chain(&e)))?;
        staged
            .commit()
            .map_err(|e| write_err(mem_path, e.to_string()))?;
        Ok(SnapshotReport {
            mem_bytes,
            took: started.elapsed(),
        })
    }

    /// Exit statistics so far, of every vCPU, with the devices' counters and KVM's own. While
    /// the VM runs each vCPU is asked for its figures (a kick: the guest leaves `KVM_RUN` for a
    /// moment); a vCPU that does not answer within [`VCPU_STATS_TIMEOUT`] is left out.
    pub fn stats(&self) -> StatsDocument {
        let finished = lock(&self.shared.final_stats).clone();
        let (per_vcpu, emulation) = match finished {
            Some(done) => done,
            None => {
                let mut per_vcpu = Vec::new();
                let mut emulation = EmulationCounts::default();
                for h in lock(&self.shared.vcpus).iter() {
                    if let Some((s, e)) = h.stats(VCPU_STATS_TIMEOUT) {
                        per_vcpu.push(s);
                        emulation.int3_injected += e.int3_injected;
                        emulation.fwait_skipped += e.fwait_skipped;
                    }
                }
                (per_vcpu, emulation)
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

/// Waits for every vCPU to report `want` (or to have exited).
fn wait_for_all(vcpus: &[VcpuHandle], want: VcpuState) -> Result<()> {
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

/// Where serial output goes, and the thread draining it.
#[derive(Debug)]
struct ConsoleOutput {
    writer: NonBlockingWriter,
    thread: OutputThread,
}

/// The destination of console output, opened (so a bad path is reported) before anything runs.
fn open_console_destination(serial: &SerialConfig) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match serial {
        SerialConfig::None => None,
        SerialConfig::Stdio => Some(Box::new(std::io::stdout())),
        SerialConfig::File(path) => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::OpenSerialFile {
                    path: path.clone(),
                    source,
                })?,
        )),
    })
}

impl ConsoleOutput {
    fn start(dest: Option<Box<dyn Write + Send>>) -> Result<Option<Self>> {
        let Some(dest) = dest else { return Ok(None) };
        let (writer, thread) =
            NonBlockingWriter::spawn("petrel-console", dest, SERIAL_OUTPUT_BUFFER)
                .map_err(Error::devices)?;
        Ok(Some(ConsoleOutput { writer, thread }))
    }

    fn sink(this: &Option<Self>) -> Box<dyn Write + Send> {
        match this {
            Some(c) => Box::new(c.writer.clone()),
            None => Box::new(std::io::sink()),
        }
    }
}

/// What loading the payload produced.
struct Loaded {
    /// The boot vCPU's state.
    boot: BootCpuState,
    /// Linux guests get the in-kernel irqchip and the PC devices; raw payloads do not.
    linux: bool,
    /// How a Linux kernel is started: `Pvh` or `Linux64`, never `Auto`; `None` for raw payloads.
    protocol: Option<BootProtocol>,
}

/// A VM, built and ready to start. See the [module documentation](self).
pub struct Vmm {
    shared: Arc<Shared>,
    timeline: Timeline,
    notices: Vec<Notice>,
    /// vCPUs created and configured, waiting for [`Vmm::start`].
    runners: Vec<VcpuRunner<PlatformIo>>,
    vcpu_thread_prefix: String,
    vcpu_exited: EventFd,
    serial: Arc<Mutex<Serial>>,
    /// Written by the UART when the guest drained its receive FIFO (for serial input).
    serial_input_ready: EventFd,
    serial_input: Option<Arc<Mutex<SerialInput>>>,
    console: Option<ConsoleOutput>,
    em: EventManager<Subscriber>,
    controller: Arc<Mutex<Controller>>,
    /// Kept for as long as the VM exists (the VM and its RAM live in the shared state, which
    /// the handles keep; the vCPUs keep the RAM alive themselves).
    _hv: Hypervisor,
}

/// What [`Vmm::assemble`] puts together.
struct Assembly {
    hv: Hypervisor,
    vm: Vm,
    ram: GuestRam,
    machine: SavedMachine,
    dirty_tracking: bool,
    devices: Devices,
    runners: Vec<VcpuRunner<PlatformIo>>,
    kvm_stats: KvmStatsReaders,
    console: Option<ConsoleOutput>,
    notices: Vec<Notice>,
    metrics: Option<std::path::PathBuf>,
}

// hv-sys places KVM's identity-map page and TSS at fixed addresses: they must fall in the MMIO
// gap of Petrel's layout, where no RAM is, and clear of the IOAPIC and local APIC windows.
const _: () = {
    use petrel_guest_mem::layout::{APIC_START, FIRST_ADDR_PAST_32BITS, MMIO32_START};
    assert!(petrel_hv_sys::KVM_IDENTITY_MAP_START >= MMIO32_START);
    assert!(petrel_hv_sys::KVM_IDENTITY_MAP_START > APIC_START + 0x1000);
    assert!(petrel_hv_sys::KVM_TSS_START + 3 * 0x1000 <= FIRST_ADDR_PAST_32BITS);
};

/// A VM with its RAM registered (dirty-logged when asked), the TSS and identity map placed, and
/// for Linux guests the in-kernel irqchip and PIT.
fn new_vm(hv: &Hypervisor, ram: &GuestRam, linux: bool, dirty: bool) -> Result<Vm> {
    let mut vm = Vm::new(hv)?;
    vm.register_memory(ram.memory())?;
    if dirty {
        vm.set_dirty_logging(true)?;
    }
    vm.setup_tss_and_identity_map()?;
    if linux {
        vm.setup_irqchip_and_pit()?;
    }
    Ok(vm)
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("state", &self.handle().state())
            .field("vcpus_not_started", &self.runners.len())
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// Builds the VM `config` describes, recording on a timeline that starts now.
    pub fn build(config: &VmConfig) -> Result<Vmm> {
        Self::build_with_timeline(config, Timeline::new(Instant::now()))
    }

    /// Builds the VM `config` describes: checks every input, loads the payload, creates the VM,
    /// its devices and its vCPUs. No vCPU runs until [`start`](Self::start); the only thread
    /// started is the console writer (for [`SerialConfig::Stdio`] or a file). `timeline`'s zero
    /// is the caller's (the process start, for the binary).
    pub fn build_with_timeline(config: &VmConfig, timeline: Timeline) -> Result<Vmm> {
        // 1. The user's input, checked before anything is started.
        let ram = GuestRam::new(config.mem_size).map_err(Error::Memory)?;
        timeline.mark("guest memory mapped");
        if config.vcpus == 0 {
            return Err(bad_vcpus(config.vcpus, "at least 1 is needed"));
        }
        if matches!(config.payload, Payload::Linux(_))
            && config.vcpus > petrel_loader::mptable::MAX_CPUS
        {
            let why = format!(
                "at most {} (the vCPUs the MP table describes must fit in the EBDA)",
                petrel_loader::mptable::MAX_CPUS
            );
            return Err(bad_vcpus(config.vcpus, &why));
        }
        let emulated = host_emulates_guest_kernel();
        let (loaded, virtio_plan) = match &config.payload {
            Payload::Raw(raw) => (load_raw(&ram, raw, config.vcpus)?, VirtioPlan::default()),
            Payload::Linux(linux) => {
                let plan = virtio::plan(config)?;
                (
                    load_linux(&ram, linux, config, emulated, &plan.cmdline)?,
                    plan,
                )
            }
        };
        let console_dest = open_console_destination(&config.serial)?;
        timeline.mark(&match loaded.protocol {
            Some(p) => format!("kernel loaded ({})", p.describe()),
            None => "payload loaded".to_string(),
        });

        // 2. KVM.
        let hv = Hypervisor::open()?;
        let max = hv.max_vcpus();
        if usize::from(config.vcpus) > max {
            return Err(bad_vcpus(
                config.vcpus,
                &format!("this host's KVM allows at most {max}"),
            ));
        }
        let mut notices = Vec::new();
        if loaded.linux && emulated && config.host_compat {
            notices.push(Notice::EmulatedHostWorkarounds);
        }
        let vm = new_vm(&hv, &ram, loaded.linux, config.track_dirty_pages)?;
        let mut kvm_stats = KvmStatsReaders::open_vm(&vm);
        timeline.mark("VM ready (memory slots, irqchip)");

        // 3. Devices, then the vCPUs, created and configured but not started.
        let console = ConsoleOutput::start(console_dest)?;
        let devices = build_devices(&vm, &ram, loaded.linux, &console, &timeline, virtio_plan)?;
        let runners = create_vcpus(&hv, &vm, &ram, &devices.io, &loaded, config, &mut kvm_stats)?;
        let machine = SavedMachine::of(config, loaded.linux);
        let parts = Assembly {
            hv,
            vm,
            ram,
            machine,
            dirty_tracking: config.track_dirty_pages,
            devices,
            runners,
            kvm_stats,
            console,
            notices,
            metrics: config.metrics.clone(),
        };
        Self::assemble(parts, timeline)
    }

    /// Builds the VM a snapshot describes, from its state file and memory file, with the
    /// restoring process's choices in `config` (serial, overrides, dirty tracking), recording
    /// on a timeline that starts now. The disks, taps and vsock socket are opened again by the
    /// paths and names saved (or overridden); the memory file is mapped privately (pages load on
    /// first touch, the file is never written). Nothing runs until [`start`](Self::start) (or
    /// [`start_paused`](Self::start_paused)). A damaged or mismatched snapshot is
    /// [`Error::BadSnapshot`] (exit code 2) and leaves nothing behind.
    pub fn restore(config: &RestoreConfig) -> Result<Vmm> {
        Self::restore_with_timeline(config, Timeline::new(Instant::now()))
    }

    /// [`restore`](Self::restore) recording on the caller's timeline.
    pub fn restore_with_timeline(config: &RestoreConfig, timeline: Timeline) -> Result<Vmm> {
        let bad = |path: &std::path::Path, why: String| Error::BadSnapshot {
            path: path.to_path_buf(),
            why,
        };
        let state_path = &config.state_path;
        let state: SnapshotState = petrel_snapshot::read_file(state_path).map_err(|e| {
            let why = match e {
                petrel_snapshot::Error::InvalidFile { problem, .. } => problem.to_string(),
                petrel_snapshot::Error::Read { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            bad(state_path, why)
        })?;
        state.check().map_err(|why| bad(state_path, why))?;
        timeline.mark("snapshot state read");

        // The machine again, with this process's overrides.
        let m = &state.machine;
        let mut vm_config = VmConfig::raw(RawPayload {
            path: state_path.clone(),
            load_addr: 0,
            entry: None,
            regs: Vec::new(),
        });
        vm_config.mem_size = m.mem_size;
        vm_config.vcpus = m.vcpus;
        vm_config.host_compat = m.host_compat;
        vm_config.disks = m.disks.clone();
        vm_config.nets = m.nets.clone();
        vm_config.rng = m.rng;
        vm_config.rng_rate_limit = m.rng_rate_limit;
        vm_config.vsock = m.vsock.clone();
        vm_config.serial = config.serial.clone();
        vm_config.max_exits = config.max_exits;
        vm_config.metrics = config.metrics.clone();
        vm_config.track_dirty_pages = config.track_dirty_pages;
        for o in &config.net_overrides {
            let net = vm_config
                .nets
                .iter_mut()
                .find(|n| n.id.as_deref() == Some(o.iface_id.as_str()))
                .ok_or_else(|| Error::InvalidConfig {
                    field: "network_overrides.iface_id".into(),
                    value: o.iface_id.clone(),
                    why: "the snapshot has no network interface of that id".into(),
                })?;
            net.tap = o.tap.clone();
        }
        if let Some(uds) = &config.vsock_uds {
            let vsock = vm_config
                .vsock
                .as_mut()
                .ok_or_else(|| Error::InvalidConfig {
                    field: "vsock_override.uds_path".into(),
                    value: uds.display().to_string(),
                    why: "the snapshot has no vsock device".into(),
                })?;
            vsock.uds = uds.clone();
        }
        let mem_path = &config.mem_path;
        let mem_file = std::fs::File::open(mem_path).map_err(|e| bad(mem_path, e.to_string()))?;
        let ram = GuestRam::from_file(m.mem_size, &mem_file)
            .map_err(|e| bad(mem_path, crate::error_chain(&e)))?;
        drop(mem_file);
        timeline.mark("guest memory mapped from the memory file");
        let plan = virtio::plan(&vm_config)?;
        for (i, ((base, gsi), saved)) in plan.windows().zip(&state.devices.virtio).enumerate() {
            if (base, gsi) != (saved.base, saved.gsi) {
                return Err(bad(
                    state_path,
                    format!(
                        "virtio device {i} was at {:#x} (GSI {}) but would now be at {base:#x} \
                         (GSI {gsi})",
                        saved.base, saved.gsi
                    ),
                ));
            }
        }
        let console_dest = open_console_destination(&config.serial)?;

        // KVM: the VM, the vCPUs and the devices, each given its saved state.
        let hv = Hypervisor::open()?;
        let max = hv.max_vcpus();
        if usize::from(m.vcpus) > max {
            return Err(bad(
                state_path,
                format!(
                    "the snapshot has {} vCPUs; this host's KVM allows at most {max}",
                    m.vcpus
                ),
            ));
        }
        let mut notices = Vec::new();
        if m.linux && host_emulates_guest_kernel() && m.host_compat {
            notices.push(Notice::EmulatedHostWorkarounds);
        }
        let vm = new_vm(&hv, &ram, m.linux, config.track_dirty_pages)?;
        let mut kvm_stats = KvmStatsReaders::open_vm(&vm);
        let console = ConsoleOutput::start(console_dest)?;
        let devices = build_devices(&vm, &ram, m.linux, &console, &timeline, plan)?;
        let saved = &state.devices;
        let device_err = |what: &str, e: &dyn std::error::Error| {
            bad(state_path, format!("{what}: {}", crate::error_chain(e)))
        };
        lock(&devices.serial)
            .restore_state(&saved.serial)
            .map_err(|e| device_err("serial", &e))?;
        if let (Some(kbd), Some(s)) = (&devices.i8042, &saved.i8042) {
            lock(kbd)
                .restore_state(s)
                .map_err(|e| device_err("i8042", &e))?;
        }
        if let (Some(rtc), Some(s)) = (&devices.rtc, &saved.rtc) {
            lock(rtc)
                .restore_state(s)
                .map_err(|e| device_err("RTC", &e))?;
        }
        for (d, s) in devices.virtio_devices.iter().zip(&saved.virtio) {
            d.restore_state(&s.state)
                .map_err(|e| device_err(&format!("virtio device at {:#x}", d.base), &e))?;
        }
        let options = RunOptions {
            max_exits: config.max_exits,
        };
        let mut runners = Vec::with_capacity(state.vcpus.len());
        for saved in &state.vcpus {
            let vcpu = vm.create_vcpu(saved.id)?;
            vcpu.restore_state(saved)?;
            kvm_stats.add_vcpu(&vcpu);
            runners.push(VcpuRunner::new(
                vcpu,
                devices.io.clone(),
                ram.clone(),
                options,
            ));
        }
        // The clock last, so guest time resumes where it stopped.
        if let Some(vm_state) = &state.vm {
            vm.restore_state(vm_state)?;
        }
        timeline.mark("VM, vCPUs and devices restored");
        let parts = Assembly {
            hv,
            vm,
            ram,
            machine: SavedMachine {
                nets: vm_config.nets.clone(),
                vsock: vm_config.vsock.clone(),
                ..state.machine.clone()
            },
            dirty_tracking: config.track_dirty_pages,
            devices,
            runners,
            kvm_stats,
            console,
            notices,
            metrics: config.metrics.clone(),
        };
        Self::assemble(parts, timeline)
    }

    /// The common end of [`build`](Self::build) and [`restore`](Self::restore): the event
    /// loop, its subscribers, and the handle's shared state.
    fn assemble(parts: Assembly, timeline: Timeline) -> Result<Vmm> {
        let Assembly {
            hv,
            vm,
            ram,
            machine,
            dirty_tracking,
            devices,
            runners,
            kvm_stats,
            console,
            notices,
            metrics,
        } = parts;
        let kvm_stats = Arc::new(Mutex::new(kvm_stats));
        let mut subscribers = devices.subscribers;
        if let Some(path) = &metrics {
            let periodic = PeriodicMetrics::new(
                path.clone(),
                METRICS_INTERVAL,
                timeline.clone(),
                kvm_stats.clone(),
            )
            .map_err(Error::EventFd)?;
            subscribers.push(Arc::new(Mutex::new(periodic)));
        }

        let stop_evt = new_eventfd()?;
        let vcpu_exited = new_eventfd()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(VmState::NotStarted),
            vcpus: Mutex::new(Vec::new()),
            stop_evt: stop_evt.try_clone().map_err(Error::EventFd)?,
            io: devices.io,
            kvm_stats,
            virtio_devices: devices.virtio_devices,
            i8042: devices.i8042,
            final_stats: Mutex::new(None),
            snap: SnapshotParts {
                vm: Mutex::new(vm),
                ram,
                machine: Mutex::new(machine),
                serial: devices.serial.clone(),
                rtc: devices.rtc,
                dirty_tracking,
            },
        });
        let mut em: EventManager<Subscriber> = EventManager::new().map_err(Error::EventLoop)?;
        let controller = Arc::new(Mutex::new(Controller::new(
            vcpu_exited.try_clone().map_err(Error::EventFd)?,
            stop_evt,
        )));
        em.add_subscriber(controller.clone());
        for s in subscribers {
            em.add_subscriber(s);
        }
        Ok(Vmm {
            shared,
            timeline,
            notices,
            runners,
            vcpu_thread_prefix: "petrel-vcpu".into(),
            vcpu_exited,
            serial: devices.serial,
            serial_input_ready: devices.input_ready,
            serial_input: None,
            console,
            em,
            controller,
            _hv: hv,
        })
    }

    /// A handle for pausing, resuming, stopping and inspecting this VM from anywhere.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            shared: self.shared.clone(),
        }
    }

    /// The VM's timeline (shared: marks made through a clone appear here).
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// What building found that the user should hear about (once, at start).
    pub fn notices(&self) -> &[Notice] {
        &self.notices
    }

    /// Names the vCPU threads `PREFIX<N>` (`petrel-vcpu<N>` by default; Firecracker's tools
    /// look for `fc_vcpu <N>`). Takes effect at [`start`](Self::start); Linux keeps 15 bytes.
    pub fn set_vcpu_thread_prefix(&mut self, prefix: &str) {
        self.vcpu_thread_prefix = prefix.to_string();
    }

    /// Adds an event source of the embedder's (a signalfd, an API socket) to the VM's event
    /// loop. It runs on the thread that calls [`run_until_stopped`](Self::run_until_stopped).
    pub fn add_subscriber(&mut self, subscriber: Subscriber) -> SubscriberId {
        self.em.add_subscriber(subscriber)
    }

    /// Forwards bytes read from `fd` (a dup of stdin, a pipe, a socket) into the guest's serial
    /// port, only as fast as the guest takes them. `fd` is made non-blocking while the VM
    /// lives; its previous flags are restored when the VM is dropped.
    pub fn attach_serial_input(&mut self, fd: OwnedFd) -> Result<()> {
        if self.serial_input.is_some() {
            return Err(Error::InvalidState {
                op: "attach a second serial input",
                state: self.handle().state(),
            });
        }
        let input_ready = self
            .serial_input_ready
            .try_clone()
            .map_err(Error::EventFd)?;
        let input =
            SerialInput::new(fd, self.serial.clone(), input_ready).map_err(Error::EventFd)?;
        let input = Arc::new(Mutex::new(input));
        self.em.add_subscriber(input.clone());
        self.serial_input = Some(input);
        Ok(())
    }

    /// Starts one thread per vCPU; the boot vCPU enters the guest at once, the others wait in
    /// KVM for the guest's INIT/SIPI. Fails if the VM was started before.
    pub fn start(&mut self) -> Result<()> {
        self.start_as(VmState::Running)
    }

    /// Starts one thread per vCPU, each parked before it enters the guest: the VM is
    /// [`VmState::Paused`] when this returns (every vCPU has acknowledged it), and
    /// [`VmmHandle::resume`] lets it run. For a restored VM that should stay paused.
    pub fn start_paused(&mut self) -> Result<()> {
        for r in &mut self.runners {
            r.set_start_paused(true);
        }
        self.start_as(VmState::Paused)?;
        let vcpus = lock(&self.shared.vcpus);
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
            let mut vcpus = lock(&shared.vcpus);
            let state = *lock(&shared.state);
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
            *lock(&shared.state) = running_state;
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

    /// Pauses the VM (see [`VmmHandle::pause`]).
    pub fn pause(&self) -> Result<()> {
        self.handle().pause()
    }

    /// Resumes the VM (see [`VmmHandle::resume`]).
    pub fn resume(&self) -> Result<()> {
        self.handle().resume()
    }

    /// Asks the VM to stop (see [`VmmHandle::stop`]).
    pub fn stop(&self) {
        self.handle().stop()
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        self.handle().state()
    }

    /// Statistics so far (see [`VmmHandle::stats`]).
    pub fn stats(&self) -> StatsDocument {
        self.handle().stats()
    }

    /// Runs the event loop on this thread (starting the VM first if it was neither started nor
    /// stopped) until
    /// a vCPU stops (the guest reset, powered off, faulted, hit its exit limit) or
    /// [`VmmHandle::stop`] is called; then stops and joins every vCPU and flushes the console.
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
        if let Some(e) = loop_error {
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
        let stop = panicked.map(StopReason::VmmError).unwrap_or_else(|| {
            outcomes
                .iter()
                .map(|o| &o.stop)
                .find(|s| !matches!(s, StopReason::Requested))
                .cloned()
                .unwrap_or(StopReason::Requested)
        });
        Ok(RunSummary {
            stop,
            stats: self.handle().stats(),
            timeline: self.timeline.clone(),
        })
    }

    /// Stops and joins every vCPU thread; records their statistics. Returns their outcomes,
    /// sorted by vCPU, and the id of one that did not stop in time, if any.
    fn shutdown_vcpus(&mut self) -> (Vec<VcpuOutcome>, Option<u64>) {
        let handles: Vec<VcpuHandle> = std::mem::take(&mut *lock(&self.shared.vcpus));
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
        let mut emulation = EmulationCounts::default();
        for o in &outcomes {
            emulation.int3_injected += o.emulation.int3_injected;
            emulation.fwait_skipped += o.emulation.fwait_skipped;
        }
        let per_vcpu = outcomes.iter().map(|o| o.stats.clone()).collect();
        *lock(&self.shared.final_stats) = Some((per_vcpu, emulation));
        *lock(&self.shared.state) = VmState::Stopped;
        (outcomes, stuck)
    }
}

impl Drop for Vmm {
    /// A VM dropped without [`Vmm::run_until_stopped`] (an embedder's error path) still stops
    /// and joins its vCPU threads: nothing is left running.
    fn drop(&mut self) {
        if !lock(&self.shared.vcpus).is_empty() {
            self.shutdown_vcpus();
        }
    }
}

/// Builds the VM `config` describes and runs it until it stops (build, start, run the event
/// loop on this thread). A convenience over [`Vmm`].
pub fn run(config: &VmConfig) -> Result<RunSummary> {
    Vmm::build(config)?.run_until_stopped()
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)
}

fn bad_vcpus(n: u8, why: &str) -> Error {
    Error::InvalidConfig {
        field: "vcpus".into(),
        value: n.to_string(),
        why: why.to_string(),
    }
}

fn load_raw(ram: &GuestRam, raw: &RawPayload, vcpus: u8) -> Result<Loaded> {
    if vcpus != 1 {
        return Err(bad_vcpus(vcpus, "raw payloads run on exactly 1 vCPU"));
    }
    let boot = petrel_loader::load_raw_file(ram, &raw.path, raw.load_addr, raw.entry)
        .map_err(Error::Load)?;
    Ok(Loaded {
        boot,
        linux: false,
        protocol: None,
    })
}

/// The command line the guest gets: the user's (or Petrel's default), what the devices need
/// (`virtio_mmio.device=...`), then the host's workarounds where the host needs them.
pub fn guest_cmdline(
    user: Option<&str>,
    devices: &str,
    emulated_host: bool,
    host_compat: bool,
) -> String {
    let mut cmdline = user.unwrap_or(DEFAULT_CMDLINE).trim().to_string();
    if !devices.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(devices);
    }
    if emulated_host && host_compat {
        cmdline.push(' ');
        cmdline.push_str(EMULATED_HOST_CMDLINE);
    }
    cmdline
}

fn load_linux(
    ram: &GuestRam,
    linux: &LinuxPayload,
    config: &VmConfig,
    emulated: bool,
    device_cmdline: &str,
) -> Result<Loaded> {
    let kernel = match &linux.kernel {
        KernelImage::File(path) => petrel_loader::load_kernel(ram, path),
        KernelImage::Builtin { name, bytes } => {
            petrel_loader::linux::load_kernel_image(ram, bytes, std::path::Path::new(name))
        }
    }
    .map_err(Error::Load)?;
    let initrd = linux
        .initrd
        .as_deref()
        .map(|p| petrel_loader::load_initrd(ram, p, &kernel))
        .transpose()
        .map_err(Error::Load)?;
    let cmdline = guest_cmdline(
        linux.cmdline.as_deref(),
        device_cmdline,
        emulated,
        config.host_compat,
    );
    // Auto follows Firecracker: PVH when the kernel has the entry note, except on hosts that
    // emulate guest kernel code (with the host workarounds on), where the 64-bit protocol's
    // page tables, built by Petrel, save the guest from building its own in the emulator.
    // Asking for PVH when the kernel has no note is refused by the loader, naming the kernel.
    let protocol = match config.boot_protocol {
        BootProtocol::Auto if emulated && config.host_compat => BootProtocol::Linux64,
        BootProtocol::Auto if kernel.pvh_entry.is_some() => BootProtocol::Pvh,
        BootProtocol::Auto => BootProtocol::Linux64,
        p => p,
    };
    let configure = match protocol {
        BootProtocol::Pvh => petrel_loader::configure_pvh_boot,
        _ => petrel_loader::configure_linux_boot,
    };
    let boot = configure(ram, &kernel, &cmdline, initrd, config.vcpus).map_err(Error::Load)?;
    Ok(Loaded {
        boot,
        linux: true,
        protocol: Some(protocol),
    })
}

fn device<D: BusDevice + 'static>(d: D) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(d))
}

/// An EventFd registered as the irqfd of `gsi` when the VM has an irqchip.
fn interrupt(vm: &Vm, gsi: u32, irqchip: bool) -> Result<EventFd> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    if irqchip {
        vm.register_irqfd(&evt, gsi)?;
    }
    Ok(evt)
}

/// The buses and the devices the VMM itself keeps talking to.
struct Devices {
    io: Arc<PlatformIo>,
    serial: Arc<Mutex<Serial>>,
    i8042: Option<Arc<Mutex<I8042>>>,
    rtc: Option<Arc<Mutex<CmosRtc>>>,
    input_ready: EventFd,
    /// Devices whose work runs on the event loop (virtio).
    subscribers: Vec<Subscriber>,
    /// The virtio devices, for reports.
    virtio_devices: Vec<virtio::AttachedDevice>,
}

fn build_devices(
    vm: &Vm,
    ram: &GuestRam,
    linux: bool,
    console: &Option<ConsoleOutput>,
    timeline: &Timeline,
    virtio_plan: VirtioPlan,
) -> Result<Devices> {
    let irqchip = linux;
    let mut i8042 = None;
    let mut rtc_handle = None;
    let mut pio = BusBuilder::new("port I/O");
    let serial_irq = interrupt(vm, COM1_IRQ, irqchip)?;
    let input_ready = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let serial = Serial::with_input_ready(
        serial_irq,
        ConsoleOutput::sink(console),
        input_ready.try_clone().map_err(Error::EventFd)?,
    );
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(BusRange::new(COM1_BASE, SERIAL_PORT_LEN), serial.clone())
        .map_err(Error::devices)?;
    if linux {
        let kbd_irq = interrupt(vm, I8042_KBD_IRQ, irqchip)?;
        let kbd = Arc::new(Mutex::new(I8042::new(kbd_irq)));
        pio.insert(BusRange::new(I8042_BASE, I8042_PORT_LEN), kbd.clone())
            .map_err(Error::devices)?;
        i8042 = Some(kbd);
        let rtc = Arc::new(Mutex::new(CmosRtc::new(Box::new(SystemClock), ram.size())));
        pio.insert(BusRange::new(RTC_BASE, RTC_PORT_LEN), rtc.clone())
            .map_err(Error::devices)?;
        rtc_handle = Some(rtc);
        let post_timeline = timeline.clone();
        let post = PostCodeSink::with_hook(move |c| {
            post_timeline.mark_guest(format!("POST code {:#04x} (port 0x80)", c.code), c.at)
        });
        pio.insert(
            BusRange::new(POST_CODE_PORT, POST_CODE_PORT_LEN),
            device(post),
        )
        .map_err(Error::devices)?;
    } else {
        let debug = DebugPort::new(ConsoleOutput::sink(console));
        pio.insert(BusRange::new(DEBUG_PORT, DEBUG_PORT_LEN), device(debug))
            .map_err(Error::devices)?;
    }
    let mut mmio = BusBuilder::new("MMIO");
    mmio.insert(
        BusRange::new(BOOT_TIMER_ADDR, BOOT_TIMER_LEN),
        device(BootTimer::new(timeline.clone())),
    )
    .map_err(Error::devices)?;
    let (subscribers, virtio_devices) = virtio::attach(virtio_plan, vm, ram, &mut mmio)?;
    let io = Arc::new(PlatformIo {
        pio: pio.build(),
        mmio: mmio.build(),
    });
    Ok(Devices {
        io,
        serial,
        i8042,
        rtc: rtc_handle,
        input_ready,
        subscribers,
        virtio_devices,
    })
}

/// Creates and configures every vCPU without starting any, so a failure starts nothing.
fn create_vcpus(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_default_user_and_host_workarounds() {
        assert_eq!(guest_cmdline(None, "", false, true), DEFAULT_CMDLINE);
        let user = guest_cmdline(Some(" console=ttyS0 "), "", false, true);
        assert_eq!(user, "console=ttyS0");
        let c = guest_cmdline(None, "", true, true);
        assert!(c.starts_with(DEFAULT_CMDLINE), "{c}");
        assert!(c.ends_with(EMULATED_HOST_CMDLINE), "{c}");
        assert_eq!(guest_cmdline(None, "", true, false), DEFAULT_CMDLINE);
        let dev = "virtio_mmio.device=4K@0xd0001000:5";
        let with_dev = guest_cmdline(Some("root=/dev/vda"), dev, false, true);
        assert_eq!(with_dev, format!("root=/dev/vda {dev}"));
    }

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
    fn api_names_of_states() {
        assert_eq!(VmState::NotStarted.api_name(), "Not started");
        assert_eq!(VmState::Running.api_name(), "Running");
        assert_eq!(VmState::Paused.api_name(), "Paused");
    }
}
