//! The VMM's [`IoHandler`]: port I/O to one bus, MMIO to another.

use petrel_devices::{Bus, BusOutcome, StopRequest};
use petrel_vcpu::{IoHandler, IoOutcome};

/// The two buses every vCPU shares, frozen after build.
#[derive(Debug)]
pub struct PlatformIo {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
}

fn outcome(o: BusOutcome) -> IoOutcome {
    match o {
        BusOutcome::Continue => IoOutcome::Continue,
        BusOutcome::Stop(StopRequest::Reset) => IoOutcome::Reset,
        BusOutcome::Stop(StopRequest::PowerOff) => IoOutcome::PowerOff,
    }
}

impl IoHandler for PlatformIo {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data);
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> IoOutcome {
        outcome(self.pio.write(u64::from(port), data))
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> IoOutcome {
        outcome(self.mmio.write(addr, data))
    }
}
