//! Petrel's devices: the bus that routes guest port and MMIO accesses, and the legacy PC devices
//! a Linux guest expects.
//!
//! A VMM builds one [`Bus`] per address space (port I/O, MMIO) with a [`BusBuilder`], freezes
//! it, and shares it as `Arc<Bus>` with its vCPU threads. Each device is an
//! `Arc<Mutex<impl BusDevice>>`; an access reaches it only when the whole access fits inside the
//! device's range, with the offset relative to the range base.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use petrel_devices::{Bus, BusBuilder, BusDevice, BusOutcome, BusRange};
//!
//! /// A one-byte scratch register.
//! struct Scratch(u8);
//!
//! impl BusDevice for Scratch {
//!     fn read(&mut self, _offset: u64, data: &mut [u8]) {
//!         data.fill(self.0);
//!     }
//!     fn write(&mut self, _offset: u64, data: &[u8]) -> BusOutcome {
//!         if let Some(&b) = data.first() {
//!             self.0 = b;
//!         }
//!         BusOutcome::Continue
//!     }
//! }
//!
//! let mut builder = BusBuilder::new("pio");
//! builder.insert(BusRange::new(0x510, 1), Arc::new(Mutex::new(Scratch(0))))?;
//! // A second device may not share an address with the first.
//! assert!(builder.insert(BusRange::new(0x500, 0x20), Arc::new(Mutex::new(Scratch(0)))).is_err());
//! let bus: Arc<Bus> = Arc::new(builder.build());
//!
//! assert_eq!(bus.write(0x510, &[0x42]), BusOutcome::Continue);
//! let mut byte = [0u8; 1];
//! bus.read(0x510, &mut byte);
//! assert_eq!(byte, [0x42]);
//!
//! // Nobody owns 0x511: the read floats to 0xff and is counted.
//! bus.read(0x511, &mut byte);
//! assert_eq!(byte, [0xff]);
//! assert_eq!(bus.unclaimed_reads(), 1);
//! # Ok::<(), petrel_devices::BusError>(())
//! ```
//!
//! The devices, each a [`BusDevice`] for the port bus:
//!
//! | module | device | ports | interrupt |
//! |---|---|---|---|
//! | [`serial`] | 16550A UART over `vm_superio` | [`COM1_BASE`] + 8 | [`COM1_IRQ`] via irqfd |
//! | [`i8042`] | PS/2 controller: reset (0xFE) stops the VM | [`I8042_BASE`] + 5 | [`I8042_KBD_IRQ`] |
//! | [`rtc`] | MC146818A CMOS clock and RAM | [`RTC_BASE`] + 2 | none |
//! | [`port80`] | POST-code sink | [`POST_CODE_PORT`] | none |
//! | [`acpi::pm`] | ACPI sleep and reset registers: S5 and reset stop the VM | [`acpi::ACPI_PM_BASE`] + 3 | none |
//!
//! [`acpi`] (the `acpi` cargo feature, on by default) also provides [`acpi::VmGenId`], the VM
//! generation ID a restored snapshot renews, and the AML of the DSDT that describes these
//! devices to an ACPI guest ([`acpi::DsdtDevices::dsdt_body`]).
//!
//! [`output`] provides [`NonBlockingWriter`], the serial output that never blocks a vCPU.
//!
//! [`io_traits`] implements rust-vmm's `vm-device` traits for these devices, so that a VMM
//! built on vm-device's `IoManager` can register them; [`BusBuilder::insert_pio`] and
//! [`BusBuilder::insert_mmio`] put any vm-device device on Petrel's bus. [`vm_device`] is
//! re-exported whole, at the version those impls and signatures use; a move to a
//! semver-incompatible vm-device (0.1 to 0.2 today) is therefore a semver-incompatible release
//! of this crate (the README's "Re-exported dependency" says more).
//!
//! [`virtio`] (the `virtio` cargo feature, on by default) provides the virtio-mmio transport,
//! [`VirtioMmio`], a [`BusDevice`] for the MMIO bus and an `event_manager` subscriber, and the devices behind it: [`Block`] (virtio-blk over
//! a raw image), [`Rng`] (entropy, rate limited) and [`Net`] (virtio-net over a tap).
//! [`rate_limiter`] provides the [`RateLimiter`] they use, in the shape of Firecracker's API
//! (`bandwidth` and `ops` token buckets).
//!
//! Wiring the legacy devices of a PC the way a VMM would:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use petrel_devices::*;
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! // Guest output goes to a drain thread; the vCPU never waits for the terminal.
//! let (out, out_thread) = NonBlockingWriter::spawn("serial-out", Box::new(std::io::sink()), 4096)?;
//! // These EventFds would be registered with KVM as irqfds for IRQ 4 and IRQ 1.
//! let com1_irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
//! let kbd_irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
//! let serial = Arc::new(Mutex::new(Serial::new(com1_irq, Box::new(out))));
//!
//! let mut pio = BusBuilder::new("pio");
//! pio.insert(BusRange::new(COM1_BASE, SERIAL_PORT_LEN), serial.clone())?;
//! pio.insert(BusRange::new(I8042_BASE, I8042_PORT_LEN), Arc::new(Mutex::new(I8042::new(kbd_irq))))?;
//! pio.insert(
//!     BusRange::new(RTC_BASE, RTC_PORT_LEN),
//!     Arc::new(Mutex::new(CmosRtc::new(Box::new(SystemClock), 512 << 20))),
//! )?;
//! pio.insert(BusRange::new(POST_CODE_PORT, POST_CODE_PORT_LEN), Arc::new(Mutex::new(PostCodeSink::new())))?;
//! let pio = Arc::new(pio.build());
//!
//! // What the vCPU loop does on KVM_EXIT_IO:
//! assert_eq!(pio.write(0x3f8, b"A"), BusOutcome::Continue);
//! assert_eq!(pio.write(0x64, &[0xfe]), BusOutcome::Stop(StopRequest::Reset));
//! assert!(serial.lock().unwrap().first_output_at().is_some());
//!
//! // At exit: stop the drain thread after it has written everything.
//! drop(serial);
//! drop(pio);
//! let stats = out_thread.flush_and_join()?;
//! assert_eq!(stats.written, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Without the virtio or acpi feature the links above to their items have nothing to point at.
#![cfg_attr(
    not(all(feature = "virtio", feature = "acpi")),
    allow(rustdoc::broken_intra_doc_links)
)]

// The README's code blocks, compiled and run as doctests so that the README cannot drift
// from the API (`cargo test --doc`). Its virtio snippet needs the `virtio` feature.
#[cfg(all(doctest, feature = "virtio"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "petrel-devices supports only x86_64 Linux hosts (KVM on x86_64); see docs/using-the-crates.md"
);

#[cfg(feature = "acpi")]
pub mod acpi;
pub mod bus;
pub mod i8042;
pub mod io_traits;
pub mod output;
pub mod port80;
pub mod rate_limiter;
pub mod rtc;
pub mod serial;
pub mod trigger;
#[cfg(feature = "virtio")]
pub mod virtio;

pub use bus::{Bus, BusBuilder, BusDevice, BusOutcome, BusRange, StopRequest};
pub use i8042::{I8042State, I8042Stats, I8042, I8042_BASE, I8042_KBD_IRQ, I8042_PORT_LEN};
pub use output::{NonBlockingWriter, OutputStats, OutputThread};
pub use port80::{PostCode, PostCodeSink, POST_CODE_PORT, POST_CODE_PORT_LEN};
pub use rate_limiter::{RateLimiter, RateLimiterConfig, TokenBucket, TokenBucketConfig};
pub use rtc::{
    Clock, CmosRtc, FixedClock, RtcState, RtcStats, SystemClock, RTC_BASE, RTC_PORT_LEN,
};
pub use serial::{Serial, SerialState, SerialStats, COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN};
pub use trigger::EventFdTrigger;
#[cfg(feature = "virtio")]
pub use virtio::{
    Balloon, BalloonState, Block, BlockState, DeviceState, Interrupt, Net, NetState, QueueState,
    Rng, RngState, VirtioDevice, VirtioMmio, VirtioMmioState, VirtioMmioStats, Vsock, VsockState,
    MMIO_WINDOW_SIZE,
};
/// rust-vmm's vm-device, whose traits and address types this crate's API uses (see
/// "Re-exported dependency" in the crate docs).
pub use vm_device;

// Each device family has its own error type, in its module; these names let a VMM that wraps
// them all spell them without the module path.
#[cfg(feature = "acpi")]
pub use acpi::Error as AcpiError;
pub use bus::Error as BusError;
pub use i8042::Error as I8042Error;
pub use output::Error as OutputError;
pub use rtc::Error as RtcError;
pub use serial::Error as SerialError;
#[cfg(feature = "virtio")]
pub use virtio::{
    balloon::BalloonError, block::Error as BlockError, net::Error as NetError,
    vsock::Error as VsockError, Error as VirtioError,
};
