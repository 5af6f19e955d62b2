//! Petrel's VMM: builds a VM from a [`VmConfig`] and runs it.
//!
//! This crate ties the others together: guest RAM (`petrel-guest-mem`), the payload
//! (`petrel-loader`), KVM (`petrel-hv-sys`), devices on a port-I/O and an MMIO bus
//! (`petrel-devices`), and one thread per vCPU (`petrel-vcpu`).
//!
//! ```no_run
//! use petrel_vmm::{config::{RawPayload, VmConfig}, run};
//! let config = VmConfig::raw(RawPayload {
//!     path: "examples/lwn-demo/lwn-demo.bin".into(),
//!     load_addr: 0x1000,
//!     entry: None,
//!     regs: vec![],
//! });
//! let summary = run(&config)?;
//! std::process::exit(summary.exit_code());
//! # Ok::<(), petrel_vmm::Error>(())
//! ```

pub mod boot_timer;
pub mod config;
pub mod console;
pub mod debug_port;
pub mod demo_guest;
pub mod event_loop;
pub mod io;
pub mod kvm_view;
pub mod metrics;
pub mod report;
pub mod signals;
pub mod terminal;
pub mod timeline;
pub mod virtio;
mod vm;

use std::path::PathBuf;

pub use config::VmConfig;
pub use petrel_vcpu::StopReason;
pub use report::{StatsDocument, StatsFormat};
pub use timeline::Timeline;
pub use vm::{
    guest_cmdline, run, run_with_timeline, RunSummary, SERIAL_OUTPUT_BUFFER, VCPU_JOIN_TIMEOUT,
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
    /// A command-line value is malformed.
    #[error("invalid {what} `{value}`: {why}")]
    InvalidArgument {
        /// What the value is for.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// Guest memory could not be set up.
    #[error("--mem: {0}")]
    Memory(petrel_guest_mem::Error),
    /// The payload could not be loaded.
    #[error(transparent)]
    Load(petrel_loader::Error),
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
    /// A KVM ioctl not wrapped by hv-sys failed.
    #[error("{what} failed")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(petrel_vcpu::Error),
    /// A device could not be set up.
    #[error(transparent)]
    Devices(petrel_devices::Error),
    /// An EventFd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A vCPU thread did not stop in time.
    #[error("vCPU {id} did not stop within {VCPU_JOIN_TIMEOUT:?}")]
    VcpuStuck {
        /// The vCPU.
        id: u64,
    },
    /// The stop signals could not be routed to the event loop.
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    /// The event loop failed.
    #[error("the event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
}

impl Error {
    /// The process exit code for this error: 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidArgument { .. }
            | Error::Memory(_)
            | Error::Load(_)
            | Error::OpenSerialFile { .. } => EXIT_BAD_INPUT,
            _ => EXIT_FAILURE,
        }
    }
}

/// An error and all its causes on one line, `outer: inner: innermost`, as users see them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
