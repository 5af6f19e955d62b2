//! The raw-payload debug port: each value a guest writes to port 0x10 is printed on its own
//! line. Port 0x10 is the convention of the classic kvmsample program (an `out %ax,$0x10` loop),
//! which Petrel ships as an example; it is only on the bus for raw payloads.

use std::io::Write;

use petrel_devices::{BusDevice, BusOutcome};

/// The port.
pub const DEBUG_PORT: u64 = 0x10;
/// It decodes 4 ports so that byte, word and dword writes at 0x10 all land here.
pub const DEBUG_PORT_LEN: u64 = 4;

/// Prints each write as a decimal number.
pub struct DebugPort {
    out: Box<dyn Write + Send>,
    writes: u64,
}

impl std::fmt::Debug for DebugPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPort")
            .field("writes", &self.writes)
            .finish()
    }
}

impl DebugPort {
    /// A debug port printing to `out` (which should not block: give it a non-blocking writer).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        DebugPort { out, writes: 0 }
    }

    /// Writes seen.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        if offset == 0 {
            let mut le = [0u8; 8];
            let n = data.len().min(8);
            le[..n].copy_from_slice(&data[..n]);
            self.writes += 1;
            let _ = writeln!(self.out, "port 0x10: {}", u64::from_le_bytes(le));
        }
        BusOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn prints_word_values_one_per_line() {
        let s = Shared::default();
        let mut d = DebugPort::new(Box::new(s.clone()));
        d.write(0, &[0x01, 0x00]);
        d.write(0, &[0x02, 0x01]);
        d.write(1, &[0x05]);
        assert_eq!(d.writes(), 2);
        assert_eq!(
            String::from_utf8(s.0.lock().unwrap().clone()).unwrap(),
            "port 0x10: 1\nport 0x10: 258\n"
        );
    }
}
