//! Petrel's VMM: a VM built from a [`VmConfig`] as an object another program can drive.
//!
//! This crate ties the others together: guest RAM (`petrel-guest-mem`), the payload
//! (`petrel-loader`), KVM (`petrel-hv-sys`), devices on a port-I/O and an MMIO bus
//! (`petrel-devices`), and one thread per vCPU (`petrel-vcpu`). [`Vmm::build`] checks every
//! input and creates the VM without running it; [`Vmm::start`] starts the vCPUs;
//! [`Vmm::run_until_stopped`] runs the event loop on the calling thread until the VM ends. A
//! [`VmmHandle`] pauses, resumes, stops and inspects it from any thread. [`run`] does all three.
//! The crate leaves process-wide state (signal handling, the terminal, stdin, panic hooks) to
//! its embedder; `docs/vm-lifecycle.md` shows who owns what.
//!
//! What this crate re-exports, and why: its own main types at the root; from other Petrel
//! crates only what its API hands out or takes, so that an embedder needs no other Petrel
//! crate for them: [`StopReason`] (`petrel-vcpu`), the rate limit configs in [`config`]
//! (`petrel-devices`), [`error_chain`] (`petrel-util`), [`boot_timer::BOOT_TIMER_ADDR`]
//! (`petrel-guest-mem`). No external crate is re-exported: the event loop's types
//! ([`Subscriber`], a `SubscriberId`) are `event-manager`'s, which an embedder that adds its own
//! event sources depends on directly.
//!
//! ```no_run
//! use petrel_vmm::{config::{RawPayload, VmConfig}, Vmm};
//! let config = VmConfig::raw(RawPayload {
//!     path: "examples/lwn-demo/lwn-demo.bin".into(),
//!     load_addr: 0x1000,
//!     entry: None,
//!     regs: vec![],
//! });
//! let mut vmm = Vmm::build(&config)?; // nothing runs yet
//! let handle = vmm.handle();          // for other threads: pause, resume, stop, stats
//! vmm.start()?;
//! handle.pause()?;                    // returns once every vCPU is parked
//! handle.resume()?;
//! let summary = vmm.run_until_stopped()?;
//! std::process::exit(summary.exit_code());
//! # Ok::<(), petrel_vmm::Error>(())
//! ```

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "petrel-vmm supports only x86_64 Linux hosts (KVM on x86_64); see docs/using-the-crates.md"
);

pub mod boot_timer;
pub mod config;
pub mod console;
pub mod debug_port;
pub mod event_loop;
#[cfg(feature = "fault-injection")]
pub mod inject;
pub mod io;
pub mod kvm_view;
pub mod metrics;
mod mmds;
pub mod report;
pub mod snapshot;
mod snapshot_huge_pages;
pub mod timeline;
pub mod uffd;
pub mod virtio;
mod vmm;
pub mod working_set;

use std::path::PathBuf;

pub use config::VmConfig;
/// Why a vCPU (and so the VM) stopped, as [`RunSummary::stop`] gives it. Re-exported from
/// `petrel-vcpu`, whose vCPU loop decides it, so that embedders match on it without depending
/// on that crate.
pub use petrel_vcpu::StopReason;
pub use report::{StatsDocument, StatsFormat};
pub use timeline::Timeline;
pub use vmm::{
    guest_cmdline, run, Notice, RunSummary, Subscriber, VmState, Vmm, VmmHandle,
    SERIAL_OUTPUT_BUFFER, VCPU_ACK_TIMEOUT, VCPU_JOIN_TIMEOUT, VCPU_STATS_TIMEOUT,
};

/// Exit code for a guest that stopped normally.
pub const EXIT_OK: i32 = 0;
/// Exit code for a guest fault or a VMM failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for bad input from the user.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong.
    #[error("invalid {field} `{value}`: {why}")]
    InvalidConfig {
        /// The [`VmConfig`] field, e.g. `vcpus` or `disks[1].path`.
        field: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// Guest memory could not be set up.
    #[error("mem_size: {0}")]
    Memory(petrel_guest_mem::Error),
    /// The payload could not be loaded.
    #[error(transparent)]
    Load(petrel_loader::Error),
    /// The MMDS could not be set up (no random bytes for its token key).
    #[error("the MMDS: {0}")]
    Mmds(String),
    /// The serial output file could not be opened.
    #[error("cannot open serial output file {}", path.display())]
    OpenSerialFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused something.
    #[error(transparent)]
    Hypervisor(#[from] petrel_hv_sys::Error),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(petrel_vcpu::Error),
    /// A device could not be set up.
    #[error(transparent)]
    Devices(DeviceError),
    /// An EventFd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A vCPU thread did not stop in time.
    #[error("vCPU {id} did not stop within {VCPU_JOIN_TIMEOUT:?}")]
    VcpuStuck {
        /// The vCPU.
        id: u64,
    },
    /// A vCPU did not acknowledge a pause or resume in time.
    #[error("vCPU {id} did not reach state {want} within {VCPU_ACK_TIMEOUT:?}")]
    VcpuUnresponsive {
        /// The vCPU.
        id: u64,
        /// The state it was asked to reach.
        want: String,
    },
    /// The VM has no such device.
    #[error("the VM has no {what} number {index}")]
    NoSuchDevice {
        /// The kind of device.
        what: &'static str,
        /// Its index among the devices of its kind.
        index: usize,
    },
    /// The operation is not valid in the VM's current state.
    #[error("cannot {op}: the VM is {}", state.api_name())]
    InvalidState {
        /// What was asked.
        op: &'static str,
        /// The state the VM was in.
        state: VmState,
    },
    /// The event loop failed.
    #[error("the event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// A snapshot to restore is unreadable, damaged, or does not fit (its state file or its
    /// memory file): the user's input.
    #[error("cannot restore from {}: {why}", path.display())]
    BadSnapshot {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Writing a snapshot failed.
    #[error("cannot write snapshot file {}: {why}", path.display())]
    SnapshotWrite {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A Diff snapshot named the memory file the VM was restored from (and maps): the Diff
    /// would replace the file it applies to.
    #[error(
        "a Diff snapshot cannot be written to {}: it is the memory file this VM was restored \
         from, the base the Diff applies to; name another file",
        path.display()
    )]
    DiffOverMappedMemory {
        /// The memory file named.
        path: PathBuf,
    },
    /// Guest memory could not be registered with a userfaultfd for the `Uffd` backend (no
    /// userfaultfd on this host, or not allowed).
    #[error("cannot serve guest memory from a page-fault handler")]
    Uffd(#[source] petrel_guest_mem::Error),
    /// The page-fault handler serving guest memory (the `Uffd` backend) closed its connection:
    /// it ended or was killed, and the guest's untouched memory can no longer be served.
    #[error(
        "the page-fault handler serving guest memory (mem_backend.backend_path `{}`) closed \
         its connection (it ended or was killed): the VM was stopped, since the pages the \
         guest has not touched yet can no longer be served",
        socket.display()
    )]
    PageFaultHandlerGone {
        /// The handler's socket.
        socket: PathBuf,
    },
    /// A Diff snapshot of a VM whose dirty pages are not tracked.
    #[error(
        "a Diff snapshot needs dirty page tracking: start the VM with track_dirty_pages \
         (in machine-config, or in the snapshot load that restored it)"
    )]
    DirtyPagesNotTracked,
}

/// A device failure, in the error type of the device family that failed (petrel-devices gives
/// the bus, each legacy device, the virtio transport and each virtio device their own).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Building the port or MMIO bus.
    #[error(transparent)]
    Bus(#[from] petrel_devices::BusError),
    /// The serial output thread.
    #[error(transparent)]
    Output(#[from] petrel_devices::OutputError),
    /// The serial port.
    #[error(transparent)]
    Serial(#[from] petrel_devices::SerialError),
    /// The i8042 controller.
    #[error(transparent)]
    I8042(#[from] petrel_devices::I8042Error),
    /// The CMOS RTC.
    #[error(transparent)]
    Rtc(#[from] petrel_devices::RtcError),
    /// The ACPI devices: the sleep and reset registers, the VM generation ID, the DSDT's AML.
    #[error(transparent)]
    Acpi(#[from] petrel_devices::AcpiError),
    /// The virtio-mmio transport, or what all virtio devices share.
    #[error(transparent)]
    Virtio(#[from] petrel_devices::VirtioError),
    /// The virtio-blk device.
    #[error(transparent)]
    Block(#[from] petrel_devices::BlockError),
    /// The virtio-net device.
    #[error(transparent)]
    Net(#[from] petrel_devices::NetError),
    /// The virtio-vsock device.
    #[error(transparent)]
    Vsock(#[from] petrel_devices::VsockError),
    /// The virtio-balloon device.
    #[error(transparent)]
    Balloon(#[from] petrel_devices::virtio::balloon::BalloonError),
}

impl Error {
    /// Wraps the error of any device family.
    pub(crate) fn devices(e: impl Into<DeviceError>) -> Error {
        Error::Devices(e.into())
    }

    /// The process exit code for this error: 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidConfig { .. }
            | Error::Memory(_)
            | Error::Load(_)
            | Error::OpenSerialFile { .. }
            | Error::BadSnapshot { .. } => EXIT_BAD_INPUT,
            _ => EXIT_FAILURE,
        }
    }
}

/// An error and all its causes on one line, `outer: inner: innermost`, as users see them.
/// Re-exported from `petrel-util` because embedders print this crate's errors with it (the
/// `petrel` binary, the Firecracker API controller).
pub use petrel_util::error_chain;

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
