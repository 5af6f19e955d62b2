//! vCPU setup and the `KVM_RUN` loop for Petrel.
//!
//! - [`cpuid::normalize`] gives each vCPU its APIC id and a consistent topology.
//! - [`setup`] applies the loader's boot CPU state, boot MSRs, FPU and LAPIC LINT pins.
//! - [`VcpuRunner`] runs the loop, sending port and MMIO accesses to an [`IoHandler`] (the
//!   VMM's buses: this crate knows no devices), timing every exit into [`ExitStats`].
//! - [`spawn`] puts a runner on its own named thread; [`VcpuHandle`] pauses, resumes, stops
//!   (command plus kick) and joins it with a timeout, and reads a paused vCPU's KVM state
//!   ([`VcpuHandle::save_state`]) for snapshots.
//!
//! ```no_run
//! use std::sync::Arc;
//! use petrel_vcpu::{IoHandler, IoOutcome, RunOptions, VcpuRunner, StopReason};
//! struct Console;
//! impl IoHandler for Console {
//!     fn pio_read(&self, _port: u16, _data: &mut [u8]) {}
//!     fn pio_write(&self, port: u16, data: &[u8]) -> IoOutcome {
//!         if port == 0x3f8 { print!("{}", data[0] as char); }
//!         IoOutcome::Continue
//!     }
//!     fn mmio_read(&self, _addr: u64, _data: &mut [u8]) {}
//!     fn mmio_write(&self, _addr: u64, _data: &[u8]) -> IoOutcome { IoOutcome::Continue }
//! }
//! # fn get() -> (petrel_hv_sys::Vcpu, petrel_guest_mem::GuestRam) { unimplemented!() }
//! let (vcpu, ram) = get();
//! let outcome = VcpuRunner::new(vcpu, Arc::new(Console), ram, RunOptions::default()).run();
//! assert_eq!(outcome.stop, StopReason::Halted);
//! ```

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "petrel-vcpu supports only x86_64 Linux hosts (KVM on x86_64); see docs/using-the-crates.md"
);

pub mod cpuid;
#[cfg(feature = "fault-injection")]
pub mod inject;
mod runner;
pub mod setup;
pub mod stats;

pub use runner::{
    spawn, spawn_named, EmulationCounts, IoHandler, IoOutcome, RunOptions, StopReason, VcpuCommand,
    VcpuHandle, VcpuOutcome, VcpuRunner, VcpuState,
};
pub use stats::{ExitKey, ExitReport, ExitStats, TimeSummary};

/// Errors from setting up or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hypervisor call failed.
    #[error(transparent)]
    Hypervisor(#[from] petrel_hv_sys::Error),
    /// A setup ioctl failed.
    #[error("{what} failed")]
    Setup {
        /// The ioctl.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// KVM took fewer boot MSRs than given.
    #[error("KVM_SET_MSRS accepted only {written} of the boot MSRs")]
    Msrs {
        /// How many it took.
        written: usize,
    },
    /// The vCPU thread could not be started.
    #[error("cannot start a vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// A command that needs a paused vCPU reached one that is not.
    #[error("vCPU {id} is {state:?}, not paused: pause it before saving its state")]
    NotPaused {
        /// The vCPU index.
        id: u64,
        /// What the vCPU thread last reported.
        state: VcpuState,
    },
    /// The vCPU thread did not answer a command in time.
    #[error("vCPU {id} did not answer {what} within {timeout:?} (has its thread exited?)")]
    NoReply {
        /// The vCPU index.
        id: u64,
        /// The command.
        what: &'static str,
        /// How long the handle waited.
        timeout: std::time::Duration,
    },
}

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
