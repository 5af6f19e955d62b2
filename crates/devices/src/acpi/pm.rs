//! The hardware-reduced ACPI sleep and reset registers (ACPI 6.5, 4.8.3.6 to 4.8.3.8): how a
//! guest without PM1 blocks powers the machine off or resets it.
//!
//! Three one-byte registers in port I/O, one after the other from [`ACPI_PM_BASE`], away from
//! every other port of Petrel's bus (COM1 0x3f8, i8042 0x60-0x64, RTC 0x70-0x71, POST 0x80,
//! the debug port 0x10-0x13):
//!
//! | port | register | what a write does | reads |
//! |---|---|---|---|
//! | [`SLEEP_CONTROL_PORT`] | SLEEP_CONTROL_REG (4.8.3.7) | SLP_EN with SLP_TYP = [`S5_SLP_TYP`]: power off | 0 |
//! | [`SLEEP_STATUS_PORT`] | SLEEP_STATUS_REG (4.8.3.8) | nothing (WAK_STS is never set) | 0 |
//! | [`RESET_PORT`] | RESET_REG (4.8.3.6) | [`RESET_VALUE`]: reset | 0 |
//!
//! Only a one-byte write, the access width the FADT's Generic Address Structures declare,
//! counts. Everything else a guest can do here (other values, other sleep types, wider or
//! misaligned accesses, reads) changes nothing and is counted in [`AcpiPmStats`]; no access
//! panics. Linux writes `(SLP_TYP << 2) | SLP_EN` for S5 (ACPICA's `acpi_hw_extended_sleep`,
//! with SLP_TYP from the DSDT's `\_S5_` package that [`crate::acpi::dsdt::s5_aml`] emits) and
//! the FADT's RESET_VALUE for an ACPI reboot (`reboot=a`, or its fallback order).

use crate::{BusDevice, BusOutcome, StopRequest};

/// First port of the register block (where Cloud Hypervisor puts its ACPI shutdown device).
pub const ACPI_PM_BASE: u64 = 0x600;
/// Ports in the register block: sleep control, sleep status, reset.
pub const ACPI_PM_PORT_LEN: u64 = 3;
/// The FADT's SLEEP_CONTROL_REG: an 8-bit System I/O register at this port.
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PM_BASE as u16;
/// The FADT's SLEEP_STATUS_REG: an 8-bit System I/O register at this port.
pub const SLEEP_STATUS_PORT: u16 = ACPI_PM_BASE as u16 + 1;
/// The FADT's RESET_REG: an 8-bit System I/O register at this port.
pub const RESET_PORT: u16 = ACPI_PM_BASE as u16 + 2;
/// The FADT's RESET_VALUE: written to [`RESET_PORT`], it resets the VM.
pub const RESET_VALUE: u8 = 0x01;
/// The SLP_TYP value of S5 (soft off), as the DSDT's `\_S5_` package advertises it.
pub const S5_SLP_TYP: u8 = 5;
/// SLP_EN, bit 5 of the sleep control register (ACPI 6.5, Table 4.19): enter the sleep state
/// SLP_TYP names.
pub const SLP_EN: u8 = 1 << 5;
/// SLP_TYP, bits 2 to 4 of the sleep control register (ACPI 6.5, Table 4.19).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

const SLEEP_CONTROL_OFFSET: u64 = (SLEEP_CONTROL_PORT as u64) - ACPI_PM_BASE;
const RESET_OFFSET: u64 = (RESET_PORT as u64) - ACPI_PM_BASE;

/// Counters of an [`AcpiPm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcpiPmStats {
    /// Writes that changed nothing: a value that is neither S5 nor the reset value, the sleep
    /// status register, or an access wider than one byte.
    pub ignored_writes: u64,
    /// Writes to the sleep control register with SLP_EN and a sleep type other than S5
    /// (Petrel offers no S1 to S4; the guest goes on running).
    pub unsupported_sleeps: u64,
    /// Reads (each answers 0).
    pub reads: u64,
}

/// The hardware-reduced ACPI sleep control, sleep status and reset registers, a port-I/O
/// [`BusDevice`] for `[ACPI_PM_BASE, ACPI_PM_BASE + ACPI_PM_PORT_LEN)`.
///
/// It keeps no state beyond its counters, so it has nothing to save in a snapshot.
#[derive(Debug, Default)]
pub struct AcpiPm {
    stats: AcpiPmStats,
}

impl AcpiPm {
    /// Makes the register block.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the guest did here so far.
    pub fn stats(&self) -> AcpiPmStats {
        self.stats
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // SLEEP_STATUS_REG's WAK_STS stays clear (the VM never sleeps and wakes); the
        // control and reset registers are write-only and read as 0.
        self.stats.reads += 1;
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusOutcome {
        let &[value] = data else {
            self.stats.ignored_writes += 1;
            return BusOutcome::Continue;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                if (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLP_TYP {
                    return BusOutcome::Stop(StopRequest::PowerOff);
                }
                self.stats.unsupported_sleeps += 1;
            }
            RESET_OFFSET if value == RESET_VALUE => return BusOutcome::Stop(StopRequest::Reset),
            _ => self.stats.ignored_writes += 1,
        }
        BusOutcome::Continue
    }

    fn name(&self) -> &'static str {
        "acpi-pm"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S5: u8 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;

    fn port_offset(port: u16) -> u64 {
        u64::from(port) - ACPI_PM_BASE
    }

    #[test]
    fn linux_s5_write_powers_off() {
        let mut pm = AcpiPm::new();
        // ACPICA's acpi_hw_extended_sleep for \_S5_ = 5: 0x34.
        assert_eq!(S5, 0x34);
        assert_eq!(
            pm.write(port_offset(SLEEP_CONTROL_PORT), &[S5]),
            BusOutcome::Stop(StopRequest::PowerOff)
        );
        // Reserved bits (0, 1, 6, 7) do not change the decoded fields.
        assert_eq!(
            pm.write(port_offset(SLEEP_CONTROL_PORT), &[S5 | 0xc3]),
            BusOutcome::Stop(StopRequest::PowerOff)
        );
    }

    #[test]
    fn reset_value_resets() {
        let mut pm = AcpiPm::new();
        assert_eq!(
            pm.write(port_offset(RESET_PORT), &[RESET_VALUE]),
            BusOutcome::Stop(StopRequest::Reset)
        );
    }

    #[test]
    fn ports_are_the_block_and_clear_of_the_other_devices() {
        assert_eq!(
            [SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT].map(port_offset),
            [0, 1, 2]
        );
        assert_eq!(ACPI_PM_PORT_LEN, 3);
        let block = crate::BusRange::new(ACPI_PM_BASE, ACPI_PM_PORT_LEN);
        for (base, len) in [
            (crate::COM1_BASE, crate::SERIAL_PORT_LEN),
            (crate::I8042_BASE, crate::I8042_PORT_LEN),
            (crate::RTC_BASE, crate::RTC_PORT_LEN),
            (crate::POST_CODE_PORT, crate::POST_CODE_PORT_LEN),
        ] {
            let mut bus = crate::BusBuilder::new("pio");
            bus.insert(
                block,
                std::sync::Arc::new(std::sync::Mutex::new(AcpiPm::new())),
            )
            .unwrap();
            bus.insert(
                crate::BusRange::new(base, len),
                std::sync::Arc::new(std::sync::Mutex::new(AcpiPm::new())),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Every one- to four-byte access at every offset with every value: a stop only for the
    /// two defined one-byte writes, reads always 0.
    #[test]
    fn every_other_access_is_harmless() {
        let mut pm = AcpiPm::new();
        let mut expected = AcpiPmStats::default();
        for offset in 0..ACPI_PM_PORT_LEN {
            for value in 0..=u8::MAX {
                let outcome = pm.write(offset, &[value]);
                let s5 = offset == port_offset(SLEEP_CONTROL_PORT) && value & 0x3c == S5;
                let reset = offset == port_offset(RESET_PORT) && value == RESET_VALUE;
                let want = match (s5, reset) {
                    (true, _) => BusOutcome::Stop(StopRequest::PowerOff),
                    (_, true) => BusOutcome::Stop(StopRequest::Reset),
                    _ => BusOutcome::Continue,
                };
                assert_eq!(outcome, want, "write {value:#x} at offset {offset}");
                if want == BusOutcome::Continue {
                    if offset == port_offset(SLEEP_CONTROL_PORT) && value & SLP_EN != 0 {
                        expected.unsupported_sleeps += 1;
                    } else {
                        expected.ignored_writes += 1;
                    }
                }
                // The same byte in a wider access never stops the VM.
                for len in 2..=4 {
                    let wide = [value; 4];
                    assert_eq!(pm.write(offset, &wide[..len]), BusOutcome::Continue);
                    expected.ignored_writes += 1;
                }
            }
            for len in 1..=4 {
                let mut buf = [0xaa; 4];
                pm.read(offset, &mut buf[..len]);
                assert_eq!(&buf[..len], &[0; 4][..len]);
                expected.reads += 1;
            }
        }
        assert_eq!(pm.write(0, &[]), BusOutcome::Continue);
        expected.ignored_writes += 1;
        assert_eq!(pm.stats(), expected);
        // SLP_EN with each of the seven other sleep types, under 16 settings of the reserved bits.
        assert_eq!(expected.unsupported_sleeps, 7 * 16);
    }
}
