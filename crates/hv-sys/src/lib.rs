//! Petrel's hypervisor layer: `/dev/kvm`, VMs, vCPUs and exits, over kvm-ioctls.
//!
//! - [`Hypervisor`] opens `/dev/kvm` with errors a user can act on and checks the API version
//!   and every capability Petrel needs, by name.
//! - [`Vm`] registers guest RAM, creates the in-kernel irqchip and PIT, irqfds and ioeventfds.
//! - [`Vcpu::run`] returns Petrel's own [`VmExit`], decoded from `kvm_run` so that string port
//!   I/O keeps its access size and count.
//! - [`Vcpu::save_state`] / [`Vm::save_state`] and their `restore_state` move a paused VM's
//!   KVM state into [`VcpuState`] / [`VmState`] (serde) and back; [`Vm::set_dirty_logging`] and
//!   [`Vm::dirty_pages`] track the pages the guest writes.
//! - [`StatsReader`] reads KVM's own per-VM and per-vCPU counters (`KVM_GET_STATS_FD`).
//! - [`kick`] gets a vCPU thread out of `KVM_RUN`; [`Vcpu::complete_emulation_failure`] deals
//!   with the instructions an emulating host cannot run.
//!
//! The crate's promise: no safe call can make KVM or the kick handler touch memory that is no
//! longer what it was given as. Guest RAM stays mapped while any vCPU of its VM exists (vCPUs
//! come only from [`Vm::create_vcpu`]; the raw VM handle is behind the unsafe [`Vm::fd`]), and a
//! vCPU's `kvm_run` mapping outlives every kick handler that could write to it.
//!
//! ```no_run
//! use petrel_hv_sys::{Hypervisor, Vm, VmExit};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//! let hv = Hypervisor::open()?;
//! let mut vm = Vm::new(&hv)?;
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! ram.write_slice(&[0xf4], GuestAddress(0)).unwrap(); // hlt
//! vm.register_memory(&ram)?;
//! let mut vcpu = vm.create_vcpu(0)?;
//! let mut sregs = vcpu.sregs()?;
//! sregs.cs.base = 0;
//! sregs.cs.selector = 0;
//! vcpu.set_sregs(&sregs)?;
//! let mut regs = vcpu.regs()?;
//! regs.rip = 0;
//! regs.rflags = 2;
//! vcpu.set_regs(&regs)?;
//! assert_eq!(vcpu.run()?, VmExit::Hlt);
//! # Ok::<(), petrel_hv_sys::Error>(())
//! ```
//!
//! # Re-exported dependencies
//!
//! [`kvm_bindings`], [`kvm_ioctls`] and [`vm_memory`] are re-exported whole: their types are
//! part of this crate's API (registers and saved state are `kvm_bindings` structures,
//! [`REQUIRED_CAPS`] and [`Vm::register_ioeventfd`] use `kvm_ioctls` types,
//! [`Vm::register_memory`] takes a `vm_memory::GuestMemoryMmap`), so a caller needs them at the
//! versions this crate uses, and these paths are those versions. A move to a semver-incompatible
//! release of any of them (for a 0.x crate the next minor) is therefore a semver-incompatible
//! release of this crate.

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "petrel-hv-sys supports only x86_64 Linux hosts (KVM on x86_64); see docs/using-the-crates.md"
);

pub mod exit;
pub mod kick;
mod kvm;
mod state;
pub mod stats;
mod vcpu;
mod vm;

pub use exit::{SystemEvent, VmExit};
pub use kvm::{host_emulates_guest_kernel, Hypervisor, KVM_API_VERSION, REQUIRED_CAPS};
/// The KVM structures this crate's API uses (registers, `kvm_run`, irqchip state).
pub use kvm_bindings;
/// kvm-ioctls, for the types this crate's API uses (`VcpuFd`, `IoEventAddress`, `Cap`). A VM
/// made with it directly is a separate VM, whose memory slots only unsafe calls can register;
/// this crate's `Vm` hands out its own `VmFd` only through the unsafe [`Vm::fd`].
pub use kvm_ioctls;
pub use state::{VcpuState, VmState, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE};
pub use stats::{Snapshot, StatDescriptor, StatKind, StatUnit, StatValue, StatsReader};
pub use vcpu::{hex_bytes, EmulationOutcome, Vcpu};
pub use vm::{Vm, KVM_IDENTITY_MAP_START, KVM_TSS_START};
/// vm-memory, for the guest memory [`Vm::register_memory`] takes (the same crate and version
/// as `petrel_guest_mem::vm_memory`).
pub use vm_memory;

/// Errors from the hypervisor layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open {path}: {hint}")]
    Open {
        /// The device path.
        path: String,
        /// What the user can do about it.
        hint: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device answered with another API version (or is not KVM at all).
    #[error(
        "KVM API version is {found}, Petrel needs {KVM_API_VERSION} (is this really /dev/kvm?)"
    )]
    ApiVersion {
        /// What `KVM_GET_API_VERSION` returned.
        found: i32,
    },
    /// Capabilities Petrel needs are missing.
    #[error("this KVM lacks required capabilities: {0}")]
    MissingCapabilities(String),
    /// `KVM_GET_VCPU_MMAP_SIZE` failed.
    #[error("KVM_GET_VCPU_MMAP_SIZE failed")]
    VcpuMmapSize(#[source] vmm_sys_util::errno::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] vmm_sys_util::errno::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] vmm_sys_util::errno::Error),
    /// A memory slot could not be registered.
    #[error("cannot register guest memory at {guest_addr:#x} with KVM")]
    MemorySlot {
        /// Guest-physical start of the region.
        guest_addr: u64,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// A platform ioctl failed.
    #[error("{what} failed")]
    Platform {
        /// The ioctl.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// `KVM_IRQFD` failed.
    #[error("cannot register an irqfd for GSI {gsi}")]
    Irqfd {
        /// The interrupt line.
        gsi: u32,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("cannot register an ioeventfd at {addr:#x}")]
    Ioeventfd {
        /// The port or MMIO address.
        addr: u64,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {id}")]
    CreateVcpu {
        /// The vCPU index.
        id: u64,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// `KVM_RUN` failed.
    #[error("KVM_RUN failed on vCPU {id}")]
    Run {
        /// The vCPU index.
        id: u64,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// A register ioctl failed.
    #[error("{what} failed")]
    Registers {
        /// The ioctl.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// A kick could not be sent.
    #[error("cannot kick a vCPU thread")]
    Kick(#[source] std::io::Error),
    /// `KVM_GET_STATS_FD` failed for a reason other than the kernel not knowing it.
    #[error("KVM_GET_STATS_FD failed")]
    StatsFd(#[source] vmm_sys_util::errno::Error),
    /// Reading a KVM binary statistics file failed.
    #[error("cannot read the {what} of a KVM statistics file")]
    StatsRead {
        /// The part being read.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A KVM binary statistics file is malformed.
    #[error("malformed KVM statistics file: {0}")]
    StatsFormat(String),
    /// The dirty page log was asked for while dirty logging is off.
    #[error("KVM keeps no dirty page log: dirty logging is off (Vm::set_dirty_logging)")]
    DirtyLoggingOff,
    /// `KVM_GET_MSRS` did not return an MSR a saved vCPU state cannot do without.
    #[error("KVM_GET_MSRS did not return MSR {index:#x} ({name}) on vCPU {id}: its state cannot be saved")]
    MsrNotSaved {
        /// The vCPU index.
        id: u64,
        /// The MSR.
        index: u32,
        /// Its name.
        name: &'static str,
    },
    /// `KVM_SET_MSRS` stopped at an MSR of a saved state.
    #[error("KVM_SET_MSRS refused MSR {index:#x} (value {data:#x}) on vCPU {id}")]
    MsrRefused {
        /// The vCPU index.
        id: u64,
        /// The first MSR not written.
        index: u32,
        /// The value it was to get.
        data: u64,
    },
    /// A state has more entries than KVM's interface takes in one call.
    #[error("{what}: {count} entries, more than the {max} KVM takes")]
    TooManyEntries {
        /// What was being built.
        what: &'static str,
        /// How many entries there were.
        count: usize,
        /// The most allowed.
        max: usize,
    },
}

/// A result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
