//! A 16550A UART, over `vm_superio::Serial`, as a [`BusDevice`].
//!
//! The register model (RBR/THR, IER, IIR, LCR, MCR, LSR, MSR, SCR, the divisor latch behind
//! LCR.DLAB, a 64-byte receive FIFO, loopback) is `vm_superio`'s. This wrapper adds what a VMM
//! needs around it:
//!
//! - the interrupt is an `EventFd` the VMM registers as a KVM irqfd for [`COM1_IRQ`];
//! - input from the host goes through [`Serial::enqueue_input`] into the bounded FIFO, and
//!   [`Serial::input_space`] tells the event loop whether to read its input at all; an optional
//!   "input ready" `EventFd` fires when the guest has drained the FIFO, so the loop can resume;
//! - output goes to any `Write`; give it a [`NonBlockingWriter`](crate::NonBlockingWriter) so a
//!   slow terminal never stalls the vCPU;
//! - the instant the first output byte arrived, for a boot timeline;
//! - counters instead of log lines for anything the guest can repeat.
//!
//! The 16550's registers are one byte wide. A wider access (e.g. `inw` at the base) is split
//! into byte accesses at consecutive offsets, the way an ISA bus splits a 16-bit cycle to an
//! 8-bit device.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};
use std::time::Instant;

use vm_superio::serial::{Error as UartError, SerialEvents};
use vmm_sys_util::eventfd::EventFd;

use crate::trigger::EventFdTrigger;
use crate::{BusDevice, BusOutcome};

/// I/O port base of COM1 (IBM PC/AT convention; Linux `8250` `SERIAL_PORT_DFNS`).
pub const COM1_BASE: u64 = 0x3f8;
/// ISA IRQ of COM1 (IBM PC/AT convention).
pub const COM1_IRQ: u32 = 4;
/// Number of ports a 16550 decodes (16550 datasheet, register table: A0-A2).
pub const SERIAL_PORT_LEN: u64 = 8;
/// Depth of the receive FIFO (16550A datasheet: 16 bytes; `vm_superio` keeps 64).
pub const SERIAL_FIFO_SIZE: usize = 64;

/// Offset of the modem control register (16550 datasheet, register table, A2..A0 = 100).
const MCR_OFFSET: u8 = 4;
/// MCR bit 4: loopback mode (16550 datasheet, MCR bit 4).
const MCR_LOOP_BIT: u8 = 0x10;

/// Counters kept by a [`Serial`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SerialStats {
    /// Bytes the guest wrote to THR that reached the output.
    pub tx_bytes: u64,
    /// Bytes the guest wrote to THR that the output refused (write error).
    pub tx_lost_bytes: u64,
    /// Reads of RBR by the guest (including reads of an empty FIFO).
    pub rbr_reads: u64,
    /// Accesses at offsets past the eight registers (only possible when called directly,
    /// not through a [`Bus`](crate::Bus) with a [`SERIAL_PORT_LEN`] range).
    pub invalid_accesses: u64,
    /// Times raising the interrupt (or the input-ready event) failed.
    pub trigger_failures: u64,
}

/// Receives `vm_superio`'s serial events; counts them and signals "input ready".
struct UartEvents {
    tx_bytes: Cell<u64>,
    tx_lost_bytes: Cell<u64>,
    rbr_reads: Cell<u64>,
    trigger_failures: Cell<u64>,
    input_ready: Option<EventFd>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {
        bump(&self.rbr_reads);
    }
    fn out_byte(&self) {
        bump(&self.tx_bytes);
    }
    fn tx_lost_byte(&self) {
        bump(&self.tx_lost_bytes);
    }
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.input_ready {
            if evt.write(1).is_err() {
                bump(&self.trigger_failures);
            }
        }
    }
}

/// The output side: the real destination plus the arrival time of the first byte.
struct Output {
    dest: Box<dyn Write + Send>,
    first_byte_at: Option<Instant>,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.first_byte_at.is_none() && !buf.is_empty() {
            self.first_byte_at = Some(Instant::now());
        }
        self.dest.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.dest.flush()
    }
}

/// A 16550A UART on the port bus.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, UartEvents, Output>,
    /// Shadow of MCR bit 4, so [`Serial::input_space`] can say "none" in loopback mode, where
    /// the FIFO takes only what the guest itself transmits.
    loopback: bool,
    invalid_accesses: u64,
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial")
            .field("input_space", &self.input_space())
            .field("loopback", &self.loopback)
            .field("first_output_at", &self.first_output_at())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Serial {
    /// A UART that raises `interrupt` (the irqfd of its IRQ) and writes guest output to `out`.
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Serial {
        Self::build(interrupt, out, None)
    }

    /// Like [`Serial::new`], and also writes to `input_ready` each time the guest has read the
    /// receive FIFO empty, so an event loop that stopped reading its input for lack of
    /// [`input_space`](Serial::input_space) knows when to resume.
    pub fn with_input_ready(
        interrupt: EventFd,
        out: Box<dyn Write + Send>,
        input_ready: EventFd,
    ) -> Serial {
        Self::build(interrupt, out, Some(input_ready))
    }

    fn build(interrupt: EventFd, out: Box<dyn Write + Send>, input_ready: Option<EventFd>) -> Self {
        let events = UartEvents {
            tx_bytes: Cell::new(0),
            tx_lost_bytes: Cell::new(0),
            rbr_reads: Cell::new(0),
            trigger_failures: Cell::new(0),
            input_ready,
        };
        let out = Output {
            dest: out,
            first_byte_at: None,
        };
        Serial {
            uart: vm_superio::Serial::with_events(EventFdTrigger::new(interrupt), events, out),
            loopback: false,
            invalid_accesses: 0,
        }
    }

    /// Queues host input for the guest; returns how many bytes were accepted.
    ///
    /// The FIFO is bounded at [`SERIAL_FIFO_SIZE`] and never grows: what does not fit is not
    /// taken, and the caller keeps it (or drops it). In loopback mode nothing is accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let fits = self.input_space().min(bytes.len());
        if fits == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..fits]) {
            Ok(n) => n,
            // The bytes are in the FIFO; only raising the interrupt failed.
            Err(UartError::Trigger(_)) => {
                self.count_trigger_failure();
                fits
            }
            Err(UartError::FullFifo) | Err(UartError::IOError(_)) => 0,
        }
    }

    /// How many bytes [`enqueue_input`](Serial::enqueue_input) would accept now.
    pub fn input_space(&self) -> usize {
        if self.loopback {
            0
        } else {
            self.uart.fifo_capacity()
        }
    }

    /// When the guest's first output byte arrived, if it has written any.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.uart.writer().first_byte_at
    }

    /// The UART's counters.
    pub fn stats(&self) -> SerialStats {
        let ev = self.uart.events();
        SerialStats {
            tx_bytes: ev.tx_bytes.get(),
            tx_lost_bytes: ev.tx_lost_bytes.get(),
            rbr_reads: ev.rbr_reads.get(),
            invalid_accesses: self.invalid_accesses,
            trigger_failures: ev.trigger_failures.get(),
        }
    }

    fn count_trigger_failure(&self) {
        bump(&self.uart.events().trigger_failures);
    }

    /// The register at `offset + i`, if it is one of the eight.
    fn register(offset: u64, i: usize) -> Option<u8> {
        let reg = offset.checked_add(u64::try_from(i).ok()?)?;
        if reg < SERIAL_PORT_LEN {
            u8::try_from(reg).ok()
        } else {
            None
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        if reg == MCR_OFFSET {
            self.loopback = value & MCR_LOOP_BIT != 0;
        }
        match self.uart.write(reg, value) {
            Ok(()) => {}
            Err(UartError::Trigger(_)) => self.count_trigger_failure(),
            // Counted by `UartEvents::tx_lost_byte`.
            Err(UartError::IOError(_)) => {}
            // Only `enqueue_raw_bytes` reports this.
            Err(UartError::FullFifo) => {}
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match Self::register(offset, i) {
                Some(reg) => self.uart.read(reg),
                None => {
                    self.invalid_accesses = self.invalid_accesses.wrapping_add(1);
                    0xff
                }
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        for (i, &value) in data.iter().enumerate() {
            match Self::register(offset, i) {
                Some(reg) => self.write_register(reg, value),
                None => self.invalid_accesses = self.invalid_accesses.wrapping_add(1),
            }
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        "serial"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    // Register offsets and bits, 16550 datasheet register table.
    const THR: u64 = 0;
    const RBR: u64 = 0;
    const DLL: u64 = 0;
    const IER: u64 = 1;
    const DLM: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const LSR_TEMT: u8 = 0x40;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LCR_DLAB: u8 = 0x80;
    /// IIR with FIFOs enabled (bits 7:6) and "no interrupt pending" (bit 0).
    const IIR_NONE: u8 = 0xc1;
    /// IIR: FIFOs enabled, THR empty (bits 3:1 = 001).
    const IIR_THRE: u8 = 0xc2;
    /// IIR: FIFOs enabled, received data available (bits 3:1 = 010).
    const IIR_RDA: u8 = 0xc4;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Rig {
        serial: Serial,
        irq: EventFd,
        out: Capture,
    }

    impl Rig {
        fn new() -> Rig {
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let out = Capture::default();
            let serial = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone()));
            Rig { serial, irq, out }
        }
        fn rd(&mut self, offset: u64) -> u8 {
            let mut b = [0u8; 1];
            self.serial.read(offset, &mut b);
            b[0]
        }
        fn wr(&mut self, offset: u64, value: u8) {
            assert_eq!(self.serial.write(offset, &[value]), BusOutcome::Continue);
        }
        /// Interrupts raised since the last call.
        fn irqs(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }
        fn output(&self) -> Vec<u8> {
            self.out.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn thr_writes_reach_the_output() {
        let mut r = Rig::new();
        for b in b"ok\n" {
            r.wr(THR, *b);
        }
        assert_eq!(r.output(), b"ok\n");
        assert_eq!(r.serial.stats().tx_bytes, 3);
        // No interrupt without IER.
        assert_eq!(r.irqs(), 0);
    }

    #[test]
    fn lsr_reports_transmitter_empty() {
        let mut r = Rig::new();
        assert_eq!(r.rd(LSR), LSR_THRE | LSR_TEMT);
        r.wr(THR, b'x');
        // Output is taken at once, so the transmitter is empty again.
        assert_eq!(r.rd(LSR), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn enabling_thr_empty_interrupt_raises_it_and_iir_reports_it() {
        let mut r = Rig::new();
        assert_eq!(r.rd(IIR), IIR_NONE);
        r.wr(IER, IER_THRE);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.rd(IIR), IIR_THRE);
        // Reading IIR acknowledged it.
        assert_eq!(r.rd(IIR), IIR_NONE);
        // Each transmitted byte empties THR again and raises it again.
        r.wr(THR, b'a');
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.rd(IIR), IIR_THRE);
    }

    #[test]
    fn received_data_sets_dr_and_raises_rda_interrupt() {
        let mut r = Rig::new();
        assert_eq!(r.serial.enqueue_input(b"hi"), 2);
        assert_eq!(r.rd(LSR) & LSR_DR, LSR_DR);
        // IER bit 0 still clear: no interrupt yet.
        assert_eq!(r.irqs(), 0);
        // Enabling it with data already waiting asserts it at once.
        r.wr(IER, IER_RDA);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.rd(IIR), IIR_RDA);

        assert_eq!(r.rd(RBR), b'h');
        assert_eq!(r.rd(LSR) & LSR_DR, LSR_DR);
        assert_eq!(r.rd(RBR), b'i');
        assert_eq!(r.rd(LSR) & LSR_DR, 0);
        assert_eq!(r.serial.stats().rbr_reads, 2);

        // New input with RDA enabled raises the interrupt.
        assert_eq!(r.serial.enqueue_input(b"!"), 1);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.rd(IIR), IIR_RDA);
    }

    #[test]
    fn full_fifo_refuses_further_input() {
        let mut r = Rig::new();
        assert_eq!(r.serial.input_space(), SERIAL_FIFO_SIZE);
        let big = [b'z'; SERIAL_FIFO_SIZE + 10];
        assert_eq!(r.serial.enqueue_input(&big), SERIAL_FIFO_SIZE);
        assert_eq!(r.serial.input_space(), 0);
        assert_eq!(r.serial.enqueue_input(b"more"), 0);
        assert_eq!(r.serial.enqueue_input(b""), 0);
        // The guest reads one: room for exactly one more.
        assert_eq!(r.rd(RBR), b'z');
        assert_eq!(r.serial.input_space(), 1);
        assert_eq!(r.serial.enqueue_input(b"ab"), 1);
        assert_eq!(r.serial.input_space(), 0);
    }

    #[test]
    fn dlab_switches_first_two_ports_to_the_divisor_latch() {
        let mut r = Rig::new();
        r.wr(IER, IER_RDA);
        r.wr(LCR, LCR_DLAB | 0x03);
        // 115200 baud: divisor 1.
        r.wr(DLL, 0x01);
        r.wr(DLM, 0x00);
        assert_eq!(r.rd(DLL), 0x01);
        assert_eq!(r.rd(DLM), 0x00);
        // The divisor write did not go out as data, nor change IER.
        assert!(r.output().is_empty());
        r.wr(LCR, 0x03);
        assert_eq!(r.rd(IER), IER_RDA);
        r.wr(THR, b'd');
        assert_eq!(r.output(), b"d");
    }

    #[test]
    fn first_output_time_is_recorded_once() {
        let mut r = Rig::new();
        assert!(r.serial.first_output_at().is_none());
        let before = Instant::now();
        r.wr(THR, b'a');
        let first = r.serial.first_output_at().unwrap();
        assert!(first >= before);
        r.wr(THR, b'b');
        assert_eq!(r.serial.first_output_at(), Some(first));
    }

    #[test]
    fn loopback_takes_no_host_input_and_echoes_thr() {
        let mut r = Rig::new();
        r.wr(MCR, MCR_LOOP_BIT);
        assert_eq!(r.serial.input_space(), 0);
        assert_eq!(r.serial.enqueue_input(b"x"), 0);
        r.wr(THR, b'L');
        assert!(r.output().is_empty());
        assert_eq!(r.rd(RBR), b'L');
        r.wr(MCR, 0);
        assert_eq!(r.serial.input_space(), SERIAL_FIFO_SIZE);
    }

    #[test]
    fn wide_accesses_are_split_into_byte_accesses() {
        let mut r = Rig::new();
        r.serial.enqueue_input(b"q");
        // A 2-byte read at LSR covers LSR and MSR.
        let mut two = [0u8; 2];
        r.serial.read(LSR, &mut two);
        assert_eq!(two[0], LSR_DR | LSR_THRE | LSR_TEMT);
        // Past the last register: 0xff and counted.
        r.serial.read(7, &mut two);
        assert_eq!(two[1], 0xff);
        r.serial.write(8, &[0]);
        assert_eq!(r.serial.stats().invalid_accesses, 2);
    }

    #[test]
    fn input_ready_fires_when_the_guest_drains_the_fifo() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::with_input_ready(irq, Box::new(io::sink()), ready.try_clone().unwrap());
        s.enqueue_input(b"ab");
        let mut b = [0u8; 1];
        s.read(RBR, &mut b);
        assert!(ready.read().is_err(), "not empty yet");
        s.read(RBR, &mut b);
        assert_eq!(ready.read().unwrap(), 1);
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        struct Fails;
        impl Write for Fails {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(Fails));
        assert_eq!(s.write(THR, b"a"), BusOutcome::Continue);
        assert_eq!(s.write(THR, b"b"), BusOutcome::Continue);
        let st = s.stats();
        assert_eq!((st.tx_bytes, st.tx_lost_bytes), (0, 2));
    }
}
