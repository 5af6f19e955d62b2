//! ACPI for a hardware-reduced x86_64 guest: the register block that powers the VM off or
//! resets it, the VMGenID device, and the AML that describes Petrel's devices in the DSDT.
//!
//! Three parts, each for one job of the VMM:
//!
//! - [`pm`]: [`AcpiPm`], a port-I/O [`BusDevice`](crate::BusDevice) with the sleep control,
//!   sleep status and reset registers of a hardware-reduced platform (ACPI 6.5, 4.8.3.6 to
//!   4.8.3.8). A guest's S5 (`poweroff`) stops the VM with
//!   [`StopRequest::PowerOff`](crate::StopRequest::PowerOff), an ACPI reset with
//!   [`StopRequest::Reset`](crate::StopRequest::Reset). The FADT that points at it takes
//!   [`SLEEP_CONTROL_PORT`], [`SLEEP_STATUS_PORT`], [`RESET_PORT`] and [`RESET_VALUE`].
//! - [`vmgenid`]: [`VmGenId`], the 16-byte virtual machine generation ID in guest memory,
//!   renewed (with an interrupt) when a snapshot is restored, so that every clone of one
//!   snapshot learns that it is a clone and reseeds its random number generator.
//! - [`dsdt`]: the AML of the DSDT's body. [`DsdtDevices::dsdt_body`] returns it whole for the
//!   devices a VM has (COM1, the i8042, the CMOS RTC, virtio-mmio windows, VMGenID and the
//!   Generic Event Device that delivers its notification, and `\_S5_`); the functions beside
//!   it return each device's part alone.
//!
//! The tables themselves (RSDP, XSDT, FADT, MADT, the DSDT's header) are the loader's: it owns
//! the guest's memory layout. Wiring a VM's ACPI:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use petrel_devices::acpi::{self, AcpiPm, DsdtDevices, VirtioMmioWindow, VmGenIdWiring};
//! use petrel_devices::{BusBuilder, BusOutcome, BusRange, StopRequest};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
//! // The place the loader chose for the generation ID, and the GSI the VMM chose for it.
//! let vmgenid_addr = GuestAddress(0x9_f000);
//! let vmgenid = acpi::VmGenId::new(&mem, vmgenid_addr, EventFd::new(EFD_NONBLOCK)?)?;
//!
//! let body = DsdtDevices {
//!     virtio_mmio: vec![VirtioMmioWindow { base: 0xd000_1000, size: 0x1000, gsi: 5 }],
//!     vmgenid: Some(VmGenIdWiring { address: vmgenid.address().0, gsi: 6 }),
//!     ..DsdtDevices::pc()
//! }
//! .dsdt_body()?;
//! assert!(!body.is_empty()); // the loader wraps it in the DSDT's header
//!
//! let mut pio = BusBuilder::new("pio");
//! pio.insert(
//!     BusRange::new(acpi::ACPI_PM_BASE, acpi::ACPI_PM_PORT_LEN),
//!     Arc::new(Mutex::new(AcpiPm::new())),
//! )?;
//! let pio = pio.build();
//! // What Linux writes for S5: SLP_TYP from `\_S5_` at bits 2..4, and SLP_EN.
//! let s5 = (acpi::S5_SLP_TYP << 2) | acpi::SLP_EN;
//! assert_eq!(
//!     pio.write(u64::from(acpi::SLEEP_CONTROL_PORT), &[s5]),
//!     BusOutcome::Stop(StopRequest::PowerOff)
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod dsdt;
pub mod pm;
pub mod vmgenid;

pub use dsdt::{DsdtDevices, VirtioMmioWindow, VmGenIdWiring};
pub use pm::{
    AcpiPm, AcpiPmStats, ACPI_PM_BASE, ACPI_PM_PORT_LEN, RESET_PORT, RESET_VALUE, S5_SLP_TYP,
    SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_EN,
};
pub use vmgenid::{VmGenId, VmGenIdState, VMGENID_LEN};

/// Errors of the ACPI devices and of building their AML.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The generation ID's guest address is not 8-byte aligned (Microsoft's "Virtual Machine
    /// Generation ID" specification asks for that alignment).
    #[error("the VMGenID address {addr:#x} is not 8-byte aligned")]
    VmGenIdMisaligned {
        /// The address given.
        addr: u64,
    },
    /// The generation ID could not be written to guest memory (the address is not in RAM).
    #[error("cannot write the VMGenID at {addr:#x}: {source}")]
    VmGenIdWrite {
        /// The guest address of the ID.
        addr: u64,
        /// What vm-memory said.
        source: vm_memory::GuestMemoryError,
    },
    /// The host's `getrandom(2)` gave no random bytes (its pool is not ready yet, or the call
    /// is forbidden).
    #[error("cannot get a random VM generation ID from the host: {0}")]
    Entropy(std::io::Error),
    /// The VMGenID interrupt's `EventFd` could not be written.
    #[error("cannot raise the VMGenID interrupt: {0}")]
    Interrupt(std::io::Error),
    /// A virtio-mmio window does not lie below 4 GiB, where its `Memory32Fixed` descriptor
    /// can describe it.
    #[error("cannot describe the virtio-mmio window {base:#x} (size {size:#x}) in the DSDT: it is not below 4 GiB")]
    MmioWindowAbove4G {
        /// The window's base.
        base: u64,
        /// The window's size.
        size: u64,
    },
    /// More virtio-mmio windows than the DSDT has names for.
    #[error("cannot describe {count} virtio-mmio windows in the DSDT: at most {max}")]
    TooManyMmioWindows {
        /// The number asked for.
        count: usize,
        /// The most there are names for.
        max: usize,
    },
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, Error>;
