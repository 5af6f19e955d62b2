//! Handing out device resources: MMIO windows in the 32-bit gap and interrupt lines.

use crate::layout::{IOAPIC_START, MMIO_DEVICES_START};

/// What could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The MMIO gap has no room left for a window of this size.
    #[error("no room left in the 32-bit MMIO gap for a {size:#x}-byte device window")]
    MmioExhausted {
        /// The window size asked for.
        size: u64,
    },
    /// No interrupt line is left for another device.
    #[error("no interrupt line left for another device (GSIs {first}..={last} are all taken)")]
    IrqExhausted {
        /// First GSI handed out.
        first: u32,
        /// Last GSI available.
        last: u32,
    },
    /// A size or alignment that is zero or not a power of two.
    #[error("invalid MMIO window request: size {size:#x}, alignment {align:#x}")]
    InvalidRequest {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
}

/// Hands out MMIO windows from the 32-bit gap, from [`MMIO_DEVICES_START`] up to the IOAPIC.
#[derive(Debug, Clone)]
pub struct MmioAllocator {
    next: u64,
    end: u64,
}

impl Default for MmioAllocator {
    fn default() -> Self {
        MmioAllocator {
            next: MMIO_DEVICES_START,
            end: IOAPIC_START,
        }
    }
}

impl MmioAllocator {
    /// An allocator over `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        MmioAllocator { next: start, end }
    }

    /// The next window of `size` bytes aligned to `align` (a power of two).
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        if size == 0 || align == 0 || !align.is_power_of_two() {
            return Err(AllocError::InvalidRequest { size, align });
        }
        let base = self
            .next
            .checked_add(align - 1)
            .map(|v| v & !(align - 1))
            .ok_or(AllocError::MmioExhausted { size })?;
        let end = base
            .checked_add(size)
            .ok_or(AllocError::MmioExhausted { size })?;
        if end > self.end {
            return Err(AllocError::MmioExhausted { size });
        }
        self.next = end;
        Ok(base)
    }
}

/// First GSI given to devices: 0-4 and 8 are the PIT, keyboard, cascade, COM2/COM1 and RTC of
/// the PC's ISA map; devices get 5, 6, 7, 9, 10, ... (the IOAPIC KVM emulates has 24 pins).
pub const FIRST_DEVICE_GSI: u32 = 5;
/// Last IOAPIC pin (KVM's IOAPIC: 24 pins, `KVM_IOAPIC_NUM_PINS`).
pub const LAST_DEVICE_GSI: u32 = 23;
/// GSIs never handed out: the RTC (8), the PS/2 mouse (12), the FPU (13) and the legacy IDE
/// channels (14, 15), which Linux probes with fixed numbers.
pub const RESERVED_GSIS: [u32; 5] = [8, 12, 13, 14, 15];

/// Hands out interrupt lines (GSIs) for devices.
#[derive(Debug, Clone)]
pub struct IrqAllocator {
    next: u32,
}

impl Default for IrqAllocator {
    fn default() -> Self {
        IrqAllocator {
            next: FIRST_DEVICE_GSI,
        }
    }
}

impl IrqAllocator {
    /// The next free GSI.
    pub fn allocate(&mut self) -> Result<u32, AllocError> {
        while RESERVED_GSIS.contains(&self.next) {
            self.next += 1;
        }
        if self.next > LAST_DEVICE_GSI {
            return Err(AllocError::IrqExhausted {
                first: FIRST_DEVICE_GSI,
                last: LAST_DEVICE_GSI,
            });
        }
        let gsi = self.next;
        self.next += 1;
        Ok(gsi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_and_disjoint() {
        let mut a = MmioAllocator::default();
        let w1 = a.allocate(0x1000, 0x1000).unwrap();
        let w2 = a.allocate(0x1000, 0x1000).unwrap();
        assert_eq!(w1, MMIO_DEVICES_START);
        assert_eq!(w2, w1 + 0x1000);
        let w3 = a.allocate(0x10, 0x2000).unwrap();
        assert_eq!(w3 % 0x2000, 0);
        assert!(w3 >= w2 + 0x1000);
    }

    #[test]
    fn the_gap_runs_out() {
        let mut a = MmioAllocator::new(0x1000, 0x3000);
        a.allocate(0x1000, 0x1000).unwrap();
        a.allocate(0x1000, 0x1000).unwrap();
        assert_eq!(
            a.allocate(0x1000, 0x1000),
            Err(AllocError::MmioExhausted { size: 0x1000 })
        );
        assert!(matches!(
            a.allocate(0, 1),
            Err(AllocError::InvalidRequest { .. })
        ));
        assert!(matches!(
            a.allocate(1, 3),
            Err(AllocError::InvalidRequest { .. })
        ));
        let mut b = MmioAllocator::new(u64::MAX - 0x10, u64::MAX);
        assert!(b.allocate(0x1000, 0x1000).is_err());
    }

    #[test]
    fn irqs_skip_the_reserved_lines_and_run_out() {
        let mut a = IrqAllocator::default();
        let got: Vec<u32> = std::iter::from_fn(|| a.allocate().ok()).collect();
        assert_eq!(
            got,
            vec![5, 6, 7, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23]
        );
        assert!(matches!(a.allocate(), Err(AllocError::IrqExhausted { .. })));
    }
}
