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
use std::convert::Infallible;
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as UartError, SerialEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::{BusDevice, BusOutcome};

/// Errors from the serial port.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
}

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

/// The saved state of a [`Serial`]: every 16550 register and the receive FIFO, as
/// `vm_superio` keeps them (mirrors `vm_superio::serial::SerialState`, with names of our own
/// that are the on-disk format). Register names follow the 16550 datasheet's register table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// DLL: divisor latch, low byte.
    pub divisor_latch_low: u8,
    /// DLM: divisor latch, high byte.
    pub divisor_latch_high: u8,
    /// IER: interrupt enable register.
    pub interrupt_enable: u8,
    /// IIR: interrupt identification, i.e. which interrupt is pending (bit 0 set: none).
    pub interrupt_identification: u8,
    /// LCR: line control register (bit 7 is DLAB).
    pub line_control: u8,
    /// LSR: line status register (data ready, transmitter empty, ...).
    pub line_status: u8,
    /// MCR: modem control register (bit 4 is loopback).
    pub modem_control: u8,
    /// MSR: modem status register.
    pub modem_status: u8,
    /// SCR: scratch register.
    pub scratch: u8,
    /// Bytes in the receive FIFO not yet read by the guest, oldest first (at most
    /// [`SERIAL_FIFO_SIZE`]).
    pub rx_fifo: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            divisor_latch_low: s.baud_divisor_low,
            divisor_latch_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.divisor_latch_low,
            baud_divisor_high: s.divisor_latch_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.rx_fifo.clone(),
        }
    }
}

/// The UART's interrupt line: an `EventFd` (a KVM irqfd). Raising it never fails towards
/// `vm_superio` (a failed write is counted instead), so that no register access and no
/// [`Serial::restore_state`] is cut short by an interrupt that could not be delivered.
struct UartIrq {
    evt: Arc<EventFd>,
    failures: Cell<u64>,
}

impl UartIrq {
    fn new(evt: Arc<EventFd>) -> Self {
        UartIrq {
            evt,
            failures: Cell::new(0),
        }
    }
}

impl Trigger for UartIrq {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        if self.evt.write(1).is_err() {
            bump(&self.failures);
        }
        Ok(())
    }
}

/// Receives `vm_superio`'s serial events; counts them and signals "input ready".
struct UartEvents {
    tx_bytes: Cell<u64>,
    tx_lost_bytes: Cell<u64>,
    rbr_reads: Cell<u64>,
    trigger_failures: Cell<u64>,
    input_ready: Option<Arc<EventFd>>,
}

impl UartEvents {
    fn new(input_ready: Option<Arc<EventFd>>) -> Self {
        UartEvents {
            tx_bytes: Cell::new(0),
            tx_lost_bytes: Cell::new(0),
            rbr_reads: Cell::new(0),
            trigger_failures: Cell::new(0),
            input_ready,
        }
    }

    /// The same counters and the same "input ready" `EventFd`, for a rebuilt UART.
    fn carry_over(&self) -> Self {
        UartEvents {
            tx_bytes: self.tx_bytes.clone(),
            tx_lost_bytes: self.tx_lost_bytes.clone(),
            rbr_reads: self.rbr_reads.clone(),
            trigger_failures: self.trigger_failures.clone(),
            input_ready: self.input_ready.clone(),
        }
    }
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

impl Output {
    fn new(dest: Box<dyn Write + Send>) -> Self {
        Output {
            dest,
            first_byte_at: None,
        }
    }
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
    uart: vm_superio::Serial<UartIrq, UartEvents, Output>,
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
        let events = UartEvents::new(input_ready.map(Arc::new));
        Serial {
            uart: vm_superio::Serial::with_events(
                UartIrq::new(Arc::new(interrupt)),
                events,
                Output::new(out),
            ),
            loopback: false,
            invalid_accesses: 0,
        }
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn save_state(&self) -> SerialState {
        SerialState::from(self.uart.state())
    }

    /// Puts the registers and receive FIFO of `state` into this UART (one built anew with
    /// [`Serial::new`] or [`Serial::with_input_ready`] when a VM is restored). The interrupt
    /// `EventFd`, the output, the "input ready" `EventFd`, the time of the first output byte
    /// and the counters stay this UART's. An interrupt that `state` has enabled and pending
    /// (transmitter empty, received data) is raised once, as `vm_superio` does, so that a
    /// guest waiting for it is not left waiting.
    ///
    /// Fails, changing nothing, when the FIFO holds more than [`SERIAL_FIFO_SIZE`] bytes.
    pub fn restore_state(&mut self, state: &SerialState) -> Result<(), Error> {
        if state.rx_fifo.len() > SERIAL_FIFO_SIZE {
            return Err(Error::SerialFifoTooLong {
                len: state.rx_fifo.len(),
                max: SERIAL_FIFO_SIZE,
            });
        }
        let old_irq = self.uart.interrupt_evt();
        let irq = UartIrq {
            evt: old_irq.evt.clone(),
            failures: old_irq.failures.clone(),
        };
        let events = self.uart.events().carry_over();
        // `vm_superio` builds a UART from a state only anew: take the output out of the old
        // one, leaving a stand-in behind until the new one is in place.
        let stand_in = vm_superio::Serial::with_events(
            UartIrq::new(irq.evt.clone()),
            UartEvents::new(None),
            Output::new(Box::new(io::sink())),
        );
        let out = std::mem::replace(&mut self.uart, stand_in).into_writer();
        let raw = vm_superio::serial::SerialState::from(state);
        match vm_superio::Serial::from_state(&raw, irq, events, out) {
            Ok(uart) => self.uart = uart,
            // Only a FIFO longer than vm_superio's, which was refused above (the interrupt
            // cannot fail: `UartIrq` counts failures instead).
            Err(_) => {
                return Err(Error::SerialFifoTooLong {
                    len: state.rx_fifo.len(),
                    max: SERIAL_FIFO_SIZE,
                })
            }
        }
        self.loopback = state.modem_control & MCR_LOOP_BIT != 0;
        Ok(())
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
            Err(UartError::Trigger(never)) => match never {},
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
            trigger_failures: ev
                .trigger_failures
                .get()
                .wrapping_add(self.uart.interrupt_evt().failures.get()),
        }
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
            Err(UartError::Trigger(never)) => match never {},
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

    #[test]
    fn a_restored_uart_carries_on_where_the_saved_one_was() {
        let mut a = Rig::new();
        a.wr(LCR, LCR_DLAB | 0x03);
        a.wr(DLL, 0x0c);
        a.wr(DLM, 0x01);
        a.wr(LCR, 0x1b);
        a.wr(7, 0x5a); // SCR
        a.wr(IER, IER_RDA);
        assert_eq!(a.serial.enqueue_input(b"xyz"), 3);
        assert_eq!(a.rd(RBR), b'x');
        // More input while the guest reads: RDA is pending again.
        assert_eq!(a.serial.enqueue_input(b"w"), 1);
        let state = a.serial.save_state();
        assert_eq!(state.rx_fifo, b"yzw");
        assert_eq!(
            (state.divisor_latch_low, state.divisor_latch_high),
            (0x0c, 0x01)
        );

        let mut b = Rig::new();
        b.serial.restore_state(&state).unwrap();
        assert_eq!(b.serial.save_state(), state);
        // Data is waiting and RDA is enabled: the interrupt is raised for the guest.
        assert_eq!(b.irqs(), 1);
        assert_eq!(b.rd(IIR), IIR_RDA);
        assert_eq!(b.rd(LCR), 0x1b);
        assert_eq!(b.rd(IER), IER_RDA);
        assert_eq!(b.rd(7), 0x5a);
        assert_eq!(b.rd(RBR), b'y');
        assert_eq!(b.serial.input_space(), SERIAL_FIFO_SIZE - 2);
        assert_eq!(b.rd(RBR), b'z');
        assert_eq!(b.rd(RBR), b'w');
        assert_eq!(b.rd(LSR) & LSR_DR, 0);
        b.wr(LCR, LCR_DLAB | 0x1b);
        assert_eq!((b.rd(DLL), b.rd(DLM)), (0x0c, 0x01));
        b.wr(LCR, 0x1b);
        // Output still goes to the new UART's own destination.
        b.wr(THR, b'!');
        assert_eq!(b.output(), b"!");
        assert!(a.output().is_empty());
        assert!(b.serial.first_output_at().is_some());
    }

    #[test]
    fn restore_keeps_the_input_ready_event_and_loopback() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::with_input_ready(irq, Box::new(io::sink()), ready.try_clone().unwrap());
        let mut state = s.save_state();
        state.rx_fifo = b"q".to_vec();
        state.line_status |= LSR_DR;
        s.restore_state(&state).unwrap();
        let mut byte = [0u8; 1];
        s.read(RBR, &mut byte);
        assert_eq!(byte, *b"q");
        assert_eq!(ready.read().unwrap(), 1);

        state.rx_fifo.clear();
        state.modem_control = MCR_LOOP_BIT;
        s.restore_state(&state).unwrap();
        assert_eq!(s.input_space(), 0);
    }

    #[test]
    fn an_overlong_fifo_is_refused_and_nothing_changes() {
        let mut r = Rig::new();
        r.wr(7, 0x11);
        let mut state = r.serial.save_state();
        state.scratch = 0x22;
        state.rx_fifo = vec![0; SERIAL_FIFO_SIZE + 1];
        let err = r.serial.restore_state(&state).unwrap_err();
        assert!(
            matches!(err, Error::SerialFifoTooLong { len: 65, max: 64 }),
            "{err}"
        );
        assert_eq!(r.rd(7), 0x11);
    }

    #[test]
    fn serial_state_round_trips_through_json() {
        let mut r = Rig::new();
        r.wr(IER, IER_THRE);
        r.serial.enqueue_input(b"ab");
        let state = r.serial.save_state();
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"divisor_latch_low\""), "{json}");
        let back: SerialState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}
