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
//! # Ok::<(), petrel_devices::Error>(())
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
//!
//! [`output`] provides [`NonBlockingWriter`], the serial output that never blocks a vCPU.
//!
//! [`virtio`] (the `virtio` cargo feature, on by default) provides the virtio-mmio transport, [`VirtioMmio`], a [`BusDevice`] for the MMIO
//! bus and an `event_manager` subscriber, and the devices behind it: [`Block`] (virtio-blk over
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
//! # Ok::<(), petrel_devices::Error>(())
//! ```

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "petrel-devices supports only x86_64 Linux hosts (KVM on x86_64); see docs/using-the-crates.md"
);

pub mod bus;
pub mod i8042;
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
    Block, BlockState, DeviceState, Interrupt, Net, NetState, QueueState, Rng, RngState,
    VirtioDevice, VirtioMmio, VirtioMmioState, VirtioMmioStats, Vsock, VsockState,
    MMIO_WINDOW_SIZE,
};

/// Errors from building a bus and from setting up devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device was inserted with a zero-length range.
    #[error("cannot insert {device} on the {bus} bus: range {range} is empty")]
    InsertEmptyRange {
        /// The bus's name.
        bus: &'static str,
        /// The device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
    },
    /// A device was inserted with a range that runs past `u64::MAX`.
    #[error("cannot insert {device} on the {bus} bus: range {range} runs past the address space")]
    InsertWrappingRange {
        /// The bus's name.
        bus: &'static str,
        /// The device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
    },
    /// A device was inserted over addresses another device already holds.
    #[error(
        "cannot insert {device} on the {bus} bus at {range}: it overlaps {existing_device} at {existing}"
    )]
    InsertOverlappingRange {
        /// The bus's name.
        bus: &'static str,
        /// The new device's name.
        device: &'static str,
        /// The range asked for.
        range: BusRange,
        /// The name of the device already there.
        existing_device: &'static str,
        /// The range it holds.
        existing: BusRange,
    },
    /// The thread that drains a [`NonBlockingWriter`] could not be started.
    #[error("cannot start the output thread")]
    SpawnOutputThread(#[source] std::io::Error),
    /// The output thread panicked.
    #[error("the output thread panicked")]
    OutputThreadPanicked,
    /// The output thread did not finish writing within the time given.
    #[error("output not flushed within {timeout:?}: {pending} bytes still buffered")]
    FlushOutputTimeout {
        /// How long we waited.
        timeout: std::time::Duration,
        /// Bytes not yet taken by the thread.
        pending: usize,
    },
    /// The output destination returned an error; later output was discarded.
    #[error("cannot write to the output destination")]
    WriteOutput(#[source] std::io::Error),
    /// An `EventFd` for a virtio transport or device could not be created.
    #[error("cannot create an eventfd")]
    CreateEventFd(#[source] std::io::Error),
    /// A virtio device declared a queue size the transport cannot offer.
    #[error(
        "{device}: queue {queue} has maximum size {size}; it must be a power of two from 1 to 32768"
    )]
    VirtioQueueSize {
        /// The device's name.
        device: &'static str,
        /// The queue index.
        queue: usize,
        /// The size it declared.
        size: u16,
    },
    /// A virtio device declared more queues than the transport can serve.
    #[error("{device}: {count} queues; a virtio device may have at most 64")]
    VirtioQueueCount {
        /// The device's name.
        device: &'static str,
        /// The number of queues it declared.
        count: usize,
    },
    /// A virtio device panicked; its transport caught the panic and set DEVICE_NEEDS_RESET.
    #[error("{device} panicked in {during}: {message}")]
    VirtioDevicePanic {
        /// The device's name.
        device: &'static str,
        /// What the transport had asked of it (`"process_queue"`, `"activate"`, ...).
        during: &'static str,
        /// The panic message (or a placeholder when the payload is not a string).
        message: String,
    },
    #[cfg(feature = "virtio")]
    /// The guest broke a virtio rule badly enough that the device set DEVICE_NEEDS_RESET.
    #[error("{device}: queue {queue}: {fault}")]
    VirtioFault {
        /// The device's name.
        device: &'static str,
        /// The queue index.
        queue: usize,
        /// What the guest did.
        fault: virtio::GuestFault,
    },
    /// A virtio-blk device ID longer than 20 bytes or not ASCII.
    #[error("block device ID {id:?} must be at most 20 ASCII characters")]
    BlockId {
        /// The ID given.
        id: String,
    },
    /// The size of a virtio-blk disk image could not be read.
    #[error("cannot read the size of the disk image")]
    BlockFileSize(#[source] std::io::Error),
    /// The rate-limiter timer of a virtio device could not be created.
    #[error("cannot create a timerfd")]
    CreateTimer(#[source] std::io::Error),
    /// The i8042 keyboard buffer has no room for a whole key sequence (the guest is not reading
    /// its keyboard); nothing was queued.
    #[error(
        "cannot send {keys}: the i8042 keyboard buffer has room for {free} of its {needed} bytes (the guest is not reading the keyboard)"
    )]
    I8042BufferFull {
        /// The key sequence.
        keys: &'static str,
        /// Bytes the sequence takes.
        needed: usize,
        /// Bytes free in the buffer.
        free: usize,
    },
    /// The guest set its keyboard to a scan code set the host cannot send keys in (set 3, or
    /// set 1 with the controller translating); nothing was queued.
    #[error(
        "cannot send {keys}: the guest keyboard uses scan code set {set} with translation {}",
        if *translated { "on" } else { "off" }
    )]
    I8042ScanSet {
        /// The key sequence.
        keys: &'static str,
        /// The keyboard's scan code set.
        set: u8,
        /// Whether the controller translates (CTR bit 6).
        translated: bool,
    },
    /// A saved device state that this device cannot take (a value out of range, a length that
    /// does not match); the device is left as it was, or reset where noted.
    #[error("cannot restore {device}: {why}")]
    InvalidState {
        /// The device's name.
        device: &'static str,
        /// What is wrong with the state.
        why: String,
    },
    /// A virtio device was given the saved state of another device type.
    #[error("cannot restore {device} from the saved state of a {saved} device")]
    DeviceStateMismatch {
        /// The device being restored.
        device: &'static str,
        /// The device type the state was saved from.
        saved: &'static str,
    },
    /// A virtio-blk disk being restored is not the disk the guest knew.
    #[error("cannot restore the virtio-blk disk {path}: its {what} is {current}, the saved disk's was {saved}")]
    BlockMismatch {
        /// The disk's path (or `(unknown path)` when the VMM did not give it).
        path: String,
        /// What differs (`"size in bytes"`, `"read-only flag"`, `"ID"`, `"features"`).
        what: &'static str,
        /// The saved value.
        saved: String,
        /// This disk's value.
        current: String,
    },
    /// A saved serial state whose receive FIFO holds more than the UART's FIFO.
    #[error(
        "cannot restore the serial port: its receive FIFO holds {len} bytes, at most {max} fit"
    )]
    SerialFifoTooLong {
        /// Bytes in the saved FIFO.
        len: usize,
        /// The FIFO's size.
        max: usize,
    },
    /// A tap name that cannot be an interface name.
    #[error("tap name {name:?} is not a valid interface name (1 to 15 bytes, no '/')")]
    TapName {
        /// The name given.
        name: String,
    },
    /// No tap device of that name exists.
    #[error(
        "tap device {name:?} does not exist (create it first: ip tuntap add dev {name} mode tap)"
    )]
    TapNotFound {
        /// The name given.
        name: String,
    },
    /// `/dev/net/tun` could not be opened for the tap, or its descriptor set up.
    #[error("cannot open tap device {name:?}")]
    OpenTap {
        /// The tap's name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A virtio-vsock guest CID that is reserved (0, 1, 2) or does not fit below `u32::MAX`.
    #[error("vsock guest CID {cid} is reserved or too large: it must be from 3 to 4294967294")]
    VsockCid {
        /// The CID given.
        cid: u64,
    },
    /// Something exists already where the vsock device's Unix socket was to be created.
    #[error("cannot create the vsock socket {}: the path exists (remove it first)", path.display())]
    VsockPathExists {
        /// The path given.
        path: std::path::PathBuf,
    },
    /// The vsock device's Unix socket could not be bound or listened on.
    #[error("cannot listen on the vsock socket {}", path.display())]
    VsockBind {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The vsock device's epoll instance or timer could not be created or set up.
    #[error("cannot set up the vsock device's {what}")]
    VsockSetup {
        /// What could not be set up.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tap configuration ioctl failed (busy, no permission, or not a tap).
    #[error("cannot attach to tap device {name:?}: {ioctl} failed")]
    TapIoctl {
        /// The tap's name.
        name: String,
        /// The ioctl that failed.
        ioctl: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
