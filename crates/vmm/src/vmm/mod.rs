//! The VM as an object: [`Vmm::build`] checks and loads everything a [`VmConfig`](crate::VmConfig) names and
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
//!
//! Where things are:
//! - this file: the [`Vmm`] itself, its states ([`VmState`]), what building tells the user
//!   ([`Notice`]), the timeouts, and the common end of building and restoring (`assemble`:
//!   the event loop and the state the handle shares);
//! - `build.rs`: building from a config: input checks, loading the payload, the VM;
//! - `devices.rs`: constructing the devices and the console output;
//! - `vcpus.rs`: creating and configuring vCPUs, starting their threads, waiting for their acknowledgements, stopping and joining them;
//! - `run.rs`: running the event loop to the end, and the [`RunSummary`];
//! - `handle.rs`: the [`VmmHandle`] and its operations, and the VM's life it shares;
//! - `balloon.rs`: the handle's balloon operations;
//! - `save.rs`: writing a snapshot; `restore.rs`: building a VM from one.

mod balloon;
mod build;
mod devices;
mod handle;
mod restore;
mod run;
mod save;
mod vcpus;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberId, SubscriberOps};
use petrel_devices::Serial;
use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{Hypervisor, Vm};
use petrel_util::lock_ignoring_poison as lock;
use petrel_vcpu::VcpuRunner;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

pub use build::guest_cmdline;
pub use handle::VmmHandle;
pub use run::{run, RunSummary};

use crate::console::SerialInput;
use crate::event_loop::Controller;
use crate::io::PlatformIo;
use crate::kvm_view::KvmStatsReaders;
use crate::metrics::{PeriodicMetrics, METRICS_INTERVAL};
use crate::report::StatsDocument;
use crate::snapshot::SavedMachine;
use crate::timeline::Timeline;
use crate::{Error, Result};
use devices::{ConsoleOutput, Devices};
use handle::{Lifecycle, Shared, SnapshotParts};

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

/// Something [`Vmm::build`] or [`Vmm::restore`] found that the user should be told about, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The host's KVM runs guest kernel code in its instruction emulator (PVM), and the
    /// guest's command line got the workarounds it needs there ([`VmConfig::host_compat`](crate::VmConfig::host_compat)
    /// turns them off).
    EmulatedHostWorkarounds,
    /// The restore brought the snapshot's working set in before the guest ran
    /// ([`WorkingSetMode::Prefetch`](crate::working_set::WorkingSetMode::Prefetch)).
    WorkingSetPrefetched {
        /// The working-set file.
        path: std::path::PathBuf,
        /// What was brought in.
        done: petrel_guest_mem::Prefetched,
        /// How long it took.
        took: Duration,
    },
    /// The snapshot's working-set file could not be used; the restore went on without it
    /// (the guest is the same, only its first touches of memory are slower).
    WorkingSetIgnored {
        /// The working-set file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl Notice {
    /// Whether the user should heed it (a warning), rather than only know it.
    pub fn is_warning(&self) -> bool {
        !matches!(self, Notice::WorkingSetPrefetched { .. })
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::EmulatedHostWorkarounds => f.write_str(
                "this host's KVM runs guest kernel code in its instruction emulator (PVM): \
                 expect a slow guest; added guest workarounds to the command line (CPU \
                 features the emulator lacks turned off; clearcpuid=110,111: no 32-bit \
                 SYSCALL or SYSENTER, so 32-bit programs use int $0x80; pty.legacy_count=0: no legacy BSD ptys, \
                 40 s of boot there; clocksource=kvm-clock: a restored guest's clock resumes \
                 where its snapshot stopped it)",
            ),
            Notice::WorkingSetPrefetched { path, done, took } => write!(
                f,
                "prefetched the working set in {}: {} pages read, {} written ahead of the guest, \
                 in {:.1} ms",
                path.display(),
                done.read,
                done.written,
                took.as_secs_f64() * 1e3
            ),
            Notice::WorkingSetIgnored { path, why } => write!(
                f,
                "ignored the working-set file {}: {why}; the guest's memory loads on demand",
                path.display()
            ),
        }
    }
}

/// A VM, built and ready to start. See the [crate documentation](crate).
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
    /// The page-fault handler serving guest memory, if one does.
    page_faults: Option<PageFaults>,
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
    /// The page-fault handler serving guest memory (a restore with the `Uffd` backend).
    page_faults: Option<crate::uffd::UffdBackend>,
    /// Records the working set when the VM ends.
    working_set: Option<crate::working_set::Recorder>,
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
            page_faults,
            working_set,
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
            life: Lifecycle::new(stop_evt.try_clone().map_err(Error::EventFd)?),
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
                vmgenid: devices.vmgenid,
                dirty_tracking,
            },
            working_set,
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
        let page_faults = match page_faults {
            Some(backend) => Some(PageFaults::watch(backend, &shared, &mut em)?),
            None => None,
        };
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
            page_faults,
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
}

impl Drop for Vmm {
    /// A VM dropped without [`Vmm::run_until_stopped`] (an embedder's error path) still stops
    /// and joins its vCPU threads: nothing is left running.
    fn drop(&mut self) {
        if !lock(&self.shared.life.vcpus).is_empty() {
            self.shutdown_vcpus();
        }
    }
}

/// A restored VM's page-fault handler: the userfaultfd, kept while the VM lives, and whether
/// the handler's connection closed (the VM is stopped then, see [`crate::uffd`]).
#[derive(Debug)]
struct PageFaults {
    _uffd: petrel_guest_mem::uffd::Userfaultfd,
    socket: std::path::PathBuf,
    gone: Arc<std::sync::atomic::AtomicBool>,
}

impl PageFaults {
    /// Puts the watch on the handler's connection on the event loop: its hang-up stops the VM.
    fn watch(
        backend: crate::uffd::UffdBackend,
        shared: &Arc<Shared>,
        em: &mut EventManager<Subscriber>,
    ) -> Result<PageFaults> {
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, weak) = (gone.clone(), Arc::downgrade(shared));
        let watch = crate::uffd::HandlerWatch::new(backend.stream, move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(shared) = weak.upgrade() {
                shared.life.stop();
            }
        })
        .map_err(|e| Error::InvalidConfig {
            field: crate::uffd::BACKEND_PATH_FIELD.into(),
            value: backend.socket.display().to_string(),
            why: format!("cannot watch the connection to the page-fault handler: {e}"),
        })?;
        em.add_subscriber(Arc::new(Mutex::new(watch)));
        Ok(PageFaults {
            _uffd: backend.uffd,
            socket: backend.socket,
            gone,
        })
    }

    /// The error to end the run with if the handler went away.
    fn gone(&self) -> Option<Error> {
        self.gone
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| Error::PageFaultHandlerGone {
                socket: self.socket.clone(),
            })
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)
}

#[cfg(test)]
mod tests {
    use petrel_vcpu::StopReason;

    use crate::VmConfig;

    use super::*;

    #[test]
    fn api_names_of_states() {
        assert_eq!(VmState::NotStarted.api_name(), "Not started");
        assert_eq!(VmState::Running.api_name(), "Running");
        assert_eq!(VmState::Paused.api_name(), "Paused");
    }

    /// Whether this machine has KVM; without it the test prints that it skipped, or with
    /// `VMM_REQUIRE_KVM=1` fails (the project's rule, as petrel-tests' `kvm_or_skip`).
    fn kvm_or_skip(name: &str) -> bool {
        if std::path::Path::new("/dev/kvm").exists() {
            return true;
        }
        if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{name}: /dev/kvm is missing and VMM_REQUIRE_KVM=1");
        }
        eprintln!("SKIPPED {name}: no /dev/kvm on this machine (set VMM_REQUIRE_KVM=1 to fail)");
        false
    }

    /// A raw payload that spins forever (`jmp $`), on one vCPU, with no console.
    fn spinning_guest(dir: &std::path::Path) -> VmConfig {
        let payload = dir.join("spin.bin");
        std::fs::write(&payload, [0xeb, 0xfe]).unwrap();
        let mut config = VmConfig::raw(crate::config::RawPayload {
            path: payload,
            load_addr: 0x1000,
            entry: None,
            regs: vec![],
        });
        config.mem_size = 16 << 20;
        config.serial = crate::config::SerialConfig::None;
        config
    }

    #[test]
    fn a_raw_vm_starts_pauses_reports_and_stops_on_request() {
        let name = "a_raw_vm_starts_pauses_reports_and_stops_on_request";
        if !kvm_or_skip(name) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("petrel-vmm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut vmm = Vmm::build(&spinning_guest(&dir)).unwrap();
        let handle = vmm.handle();
        assert_eq!(handle.state(), VmState::NotStarted);
        let e = handle.send_ctrl_alt_del().unwrap_err();
        assert!(matches!(e, Error::NoSuchDevice { .. }), "{e}");
        let e = handle.replace_disk(0, &dir.join("disk")).unwrap_err();
        assert_eq!(e.to_string(), "the VM has no disk number 0");
        vmm.start().unwrap();
        assert!(vmm.start().is_err(), "a second start was accepted");
        handle.pause().unwrap();
        assert_eq!(handle.state(), VmState::Paused);
        assert_eq!(handle.stats().per_vcpu.len(), 1);
        let stopper = handle.clone();
        stopper.stop();
        let summary = vmm.run_until_stopped().unwrap();
        assert_eq!(summary.stop, StopReason::Requested);
        assert_eq!(summary.exit_code(), crate::EXIT_OK);
        assert_eq!(handle.state(), VmState::Stopped);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
