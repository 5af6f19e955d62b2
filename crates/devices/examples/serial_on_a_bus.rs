//! A 16550 UART on a port-I/O bus, driven the way a guest driver would: by register writes
//! and reads at COM1's ports, as a vCPU's exits would deliver them. What the guest "prints"
//! lands in a buffer, which the example prints at the end.
//!
//! `cargo run -p petrel-devices --example serial_on_a_bus`

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use petrel_devices::{Bus, BusBuilder, BusRange, Serial, COM1_BASE, SERIAL_PORT_LEN};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The UART's output: a buffer shared with `main`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// 16550 register offsets from the base port, and the bits used here.
const THR: u64 = 0; // transmit holding register (write)
const IER: u64 = 1; // interrupt enable
const LCR: u64 = 3; // line control: bit 7 is DLAB, bits 0-1 the word length
const LSR: u64 = 5; // line status: bit 5 "transmit holding register empty"

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The interrupt line: a VMM registers this EventFd with KVM as the irqfd of IRQ 4.
    let irq = EventFd::new(EFD_NONBLOCK)?;
    let out = Captured::default();
    let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(out.clone()))));

    let mut pio = BusBuilder::new("pio");
    pio.insert(BusRange::new(COM1_BASE, SERIAL_PORT_LEN), serial)?;
    let bus: Arc<Bus> = Arc::new(pio.build()); // frozen: shared with the vCPU threads

    // What a guest's early console does: 115200 baud (divisor 1), 8N1, interrupts off.
    bus.write(COM1_BASE + LCR, &[0x80]); // DLAB on: offsets 0 and 1 are the divisor
    bus.write(COM1_BASE, &[1]);
    bus.write(COM1_BASE + 1, &[0]);
    bus.write(COM1_BASE + LCR, &[0x03]); // DLAB off, 8 data bits, no parity, 1 stop bit
    bus.write(COM1_BASE + IER, &[0]);
    for &byte in b"hello from the 16550\n" {
        let mut lsr = [0u8];
        bus.read(COM1_BASE + LSR, &mut lsr); // poll until the UART can take a byte
        assert_ne!(lsr[0] & 0x20, 0, "THR should always be empty here");
        bus.write(COM1_BASE + THR, &[byte]);
    }
    // A port nobody owns reads as 0xff, and the bus counts it.
    let mut floating = [0u8];
    bus.read(COM1_BASE + SERIAL_PORT_LEN, &mut floating);

    let text = out.0.lock().unwrap().clone();
    print!("UART output: {}", String::from_utf8_lossy(&text));
    println!(
        "unclaimed port {:#x} read {:#04x}; unclaimed reads: {}",
        COM1_BASE + SERIAL_PORT_LEN,
        floating[0],
        bus.unclaimed_reads()
    );
    Ok(())
}
