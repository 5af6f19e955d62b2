//! The VMM's [`IoHandler`]: port I/O to one bus, MMIO to another.
//!
//! Built with the `record-io` feature, every access is also appended to the file named by the
//! `PETREL_RECORD_IO` environment variable (when set), one line each: `pio|mmio r|w ADDR HEX`,
//! the data as the guest wrote it or as the device answered. The fuzz seed corpora are made
//! from such a recording of a Linux boot (docs/fuzzing.md). The file is opened at the first
//! access, on a vCPU thread, whose seccomp filter forbids `openat`: record with `--no-seccomp`.
//! Without the feature nothing of it is compiled.

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

/// Appends one access to the `PETREL_RECORD_IO` file, if that variable names one.
#[cfg(feature = "record-io")]
fn record(bus: &str, dir: char, addr: u64, data: &[u8]) {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};
    static OUT: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let out = OUT.get_or_init(|| {
        let path = std::env::var_os("PETREL_RECORD_IO")?;
        std::fs::File::create(path).ok().map(Mutex::new)
    });
    if let Some(file) = out {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let line = format!("{bus} {dir} {addr:#x} {hex}\n");
        let _ = file.lock().map(|mut f| f.write_all(line.as_bytes()));
    }
}

impl IoHandler for PlatformIo {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data);
        #[cfg(feature = "record-io")]
        record("pio", 'r', u64::from(port), data);
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> IoOutcome {
        #[cfg(feature = "fault-injection")]
        crate::inject::device_panic("vcpu-device-panic");
        #[cfg(feature = "record-io")]
        record("pio", 'w', u64::from(port), data);
        outcome(self.pio.write(u64::from(port), data))
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
        #[cfg(feature = "record-io")]
        record("mmio", 'r', addr, data);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> IoOutcome {
        #[cfg(feature = "record-io")]
        record("mmio", 'w', addr, data);
        outcome(self.mmio.write(addr, data))
    }
}
